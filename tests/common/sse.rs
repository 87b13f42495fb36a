//! A Server-Sent Events client for the tests: `GET /sse` over a real socket, read as
//! `EventSource` reads it (`id:` and `data:` lines, messages ended by a blank line).

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::WAIT;

/// An open stream.
pub struct SseStream {
    response: reqwest::Response,
    /// Bytes read but not yet split into messages (a chunk may end inside a
    /// character).
    buffer: Vec<u8>,
    /// The last `id:` seen, as `EventSource.lastEventId`.
    pub last_id: Option<String>,
}

/// What `GET /sse` answered.
pub enum Opened {
    Stream(SseStream),
    /// Refused before the stream: status, JSON body, `Retry-After`.
    Refused(u16, Value, String),
}

impl Opened {
    /// The stream; fails if the request was refused.
    pub fn stream(self) -> Result<SseStream> {
        match self {
            Opened::Stream(s) => Ok(s),
            Opened::Refused(status, body, _) => bail!("refused: {status} {body}"),
        }
    }

    /// The refusal (status and body); fails if a stream opened.
    pub fn refused(self) -> Result<(u16, Value)> {
        match self {
            Opened::Refused(status, body, _) => Ok((status, body)),
            Opened::Stream(_) => bail!("a stream opened"),
        }
    }
}

impl SseStream {
    /// `GET url` (`…/sse?…`) with the given extra headers.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Opened> {
        let mut request = reqwest::Client::new().get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        if status != 200 {
            let retry_after = crate::header(&response, "retry-after");
            let body = response.json().await.unwrap_or(Value::Null);
            return Ok(Opened::Refused(status, body, retry_after));
        }
        let content_type = crate::header(&response, "content-type");
        if content_type != "text/event-stream" {
            bail!("content-type {content_type:?}");
        }
        Ok(Opened::Stream(SseStream {
            response,
            buffer: Vec::new(),
            last_id: None,
        }))
    }

    /// The next message, `ping` included, within `timeout`; `None` when the stream
    /// ended.
    pub async fn next_any(&mut self, timeout: Duration) -> Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block)?;
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        self.last_id = Some(v.to_owned());
                    } else if !line.is_empty() {
                        bail!("unexpected line {line:?}");
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Ok(Some(serde_json::from_str(&data.join("\n"))?));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .map_err(|_| anyhow!("no message within {timeout:?}"))??;
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }

    /// The next message that is not a `ping`.
    pub async fn next(&mut self) -> Result<Value> {
        loop {
            match self.next_any(WAIT).await? {
                Some(m) if m["type"] == "ping" => continue,
                Some(m) => return Ok(m),
                None => bail!("the stream ended"),
            }
        }
    }

    /// The next `event`, skipping pings.
    pub async fn event(&mut self) -> Result<Value> {
        let m = self.next().await?;
        if m["type"] != "event" {
            bail!("expected an event, got {m}");
        }
        Ok(m)
    }

    /// Reads until the stream ends (within `timeout`); every message on the way.
    pub async fn until_end(&mut self, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_any(left).await? {
                Some(m) => seen.push(m),
                None => return Ok(seen),
            }
        }
    }
}
