//! `auth.jwks_url` end to end: the real binary against a JWKS server started by the
//! test (tests/common/jwks.rs), over HTTPS with a private CA and over HTTP. RS256,
//! ES256 and EdDSA keys; rotation while clients stay connected; the refresh on an
//! unknown key id and its rate limit; `Cache-Control`; a provider that goes down, and
//! one that is down from the start (docs/security.md, "Keys from the identity
//! provider").

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use herald_e2e::jwks::{JwksServer, SigningKey};
use herald_e2e::{config, config_error, Broker, Client};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const API_KEY: &str = "api-key-for-jwks-tests";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims of `sub`, valid for a minute, allowed to read `news.>`.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 60, "herald": {"subscribe": ["news.>"]}})
}

/// A node that takes its keys from `jwks`, plus `extra` `[auth]` lines.
fn start(jwks: &JwksServer, extra: &str) -> Result<Broker> {
    let ca = jwks
        .ca_file()
        .map_or(String::new(), |f| format!("jwks_ca_file = \"{f}\"\n"));
    Broker::start(&config(
        "",
        &format!(
            "[auth]\nmode = \"jwt\"\njwks_url = \"{}\"\n{ca}api_keys = [\"{API_KEY}\"]\n{extra}",
            jwks.url()
        ),
    ))
}

fn upgrade(
    broker: &Broker,
    token: &str,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let mut req = broker.ws_url().into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    Ok(req)
}

/// The status and JSON body of a refused upgrade.
async fn refused(broker: &Broker, token: &str) -> Result<(u16, Value, String)> {
    match tokio_tungstenite::connect_async(upgrade(broker, token)?).await {
        Ok(_) => bail!("the upgrade was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = res
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Ok((res.status().as_u16(), body, retry_after))
        }
        Err(e) => bail!("unexpected error: {e}"),
    }
}

/// Checks that the upgrade with `token` is refused with 401 and a message saying
/// `why`.
async fn refused_because(broker: &Broker, token: &str, why: &str) -> Result<()> {
    let (status, body, _) = refused(broker, token).await?;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(why),
        "{why:?} in {body}"
    );
    Ok(())
}

/// `POST /api/tickets` as the holder of `token`: status and body.
async fn ticket(broker: &Broker, token: &str) -> Result<(u16, Value)> {
    let res = reqwest::Client::new()
        .post(format!("{}/api/tickets", broker.http()))
        .bearer_auth(token)
        .send()
        .await?;
    Ok((
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    ))
}

/// `POST /api/publish` of one event with the API key: the status.
async fn publish(broker: &Broker, topic: &str, data: Value) -> Result<u16> {
    let res = reqwest::Client::new()
        .post(format!("{}/api/publish", broker.http()))
        .bearer_auth(API_KEY)
        .json(&json!({"topic": topic, "data": data}))
        .send()
        .await?;
    Ok(res.status().as_u16())
}

/// Waits (up to 15 s) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        ensure!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_es256_and_eddsa_keys_from_a_jwks_over_https_verify_tokens() -> Result<()> {
    let (rsa, ec, ed) = (
        SigningKey::rsa("r1")?,
        SigningKey::p256("e1")?,
        SigningKey::ed25519("d1")?,
    );
    let jwks = JwksServer::start_https(&[&rsa, &ec, &ed]).await?;
    let broker = start(&jwks, "")?;
    broker.wait_readyz(200).await?;

    let mut tokens = Vec::new();
    for key in [&rsa, &ec, &ed] {
        let token = key.sign(&claims("ivy"));
        let c = Client::connect_with(upgrade(&broker, &token)?).await?;
        assert_eq!(c.welcome["type"], "welcome", "{:?}", key.alg);
        let (status, body) = ticket(&broker, &token).await?;
        assert_eq!(status, 201, "{:?}: {body}", key.alg);
        tokens.push(token);
    }
    // First-message auth takes the same keys.
    let mut c = Client::open(broker.ws_url()).await?;
    c.send(json!({"op": "auth", "token": ed.sign(&claims("ivy"))}))
        .await?;
    assert_eq!(c.recv().await?["type"], "welcome");

    // A key the provider never published, under a published kid: bad signature.
    let impostor = SigningKey::p256("e1")?;
    refused_because(&broker, &impostor.sign(&claims("eve")), "bad signature").await?;
    // A published kid with another algorithm: the key decides, not the token.
    refused_because(
        &broker,
        &SigningKey::p256("r1")?.sign(&claims("eve")),
        "does not match",
    )
    .await?;
    // A kid nobody published.
    refused_because(
        &broker,
        &SigningKey::ed25519("zz")?.sign(&claims("eve")),
        "does not know",
    )
    .await?;

    assert_eq!(broker.metric("herald_jwks_keys").await?, 3.0);
    assert_eq!(broker.metric("herald_jwks_stale").await?, 0.0);
    assert!(
        broker
            .metric("herald_jwks_fetches_total{result=\"ok\"}")
            .await?
            >= 1.0
    );
    let log = broker.log_text();
    assert!(log.contains("jwks loaded"), "{log}");
    for t in &tokens {
        assert!(!log.contains(t.as_str()), "a token reached the log");
    }

    // The same HTTPS endpoint without its CA: the certificate is not trusted, and
    // `/readyz` says so.
    let untrusting = Broker::start(&config(
        "",
        &format!("[auth]\nmode = \"jwt\"\njwks_url = \"{}\"\n", jwks.url()),
    ))?;
    // The reason names the failure once the first fetch has failed.
    let reason = untrusting.wait_reason("last fetch failed").await?;
    assert!(reason.starts_with("jwks: no keys yet"), "{reason}");
    assert!(reason.contains("certificate"), "{reason}");
    assert!(
        !reason.contains("/jwks"),
        "the URL stays out of /readyz: {reason}"
    );

    // An HMAC token cannot be for a JWKS: refused without a fetch.
    let requests = jwks.requests();
    let hs = herald_e2e::hs256("0123456789abcdef0123456789abcdef", &claims("eve"));
    refused_because(&broker, &hs, "not accepted").await?;
    assert_eq!(jwks.requests(), requests, "no fetch for an HMAC token");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_while_clients_stay_connected() -> Result<()> {
    const MIN_REFRESH: Duration = Duration::from_millis(1000);
    let old = SigningKey::ed25519("2026-11")?;
    let jwks = JwksServer::start(&[&old]).await?;
    // No Cache-Control and a long maximum: every fetch after the first is one a
    // token asked for.
    let broker = start(
        &jwks,
        "jwks_min_refresh_ms = 1000\njwks_max_refresh_ms = 600000\n",
    )?;
    broker.wait_readyz(200).await?;
    let fetched_at_start = Instant::now();
    assert_eq!(jwks.requests(), 1);

    let mut before = Client::connect_with(upgrade(&broker, &old.sign(&claims("u1")))?).await?;
    before.subscribe(&["news.>"]).await?;

    // The provider rotates: the new key replaces the old one, and its first token
    // arrives at once. The node fetches the set again for it (once the minimum
    // interval since the last fetch has passed) and lets it in.
    let new = SigningKey::p256("2026-12")?;
    jwks.publish(&[&new]);
    tokio::time::sleep(MIN_REFRESH.saturating_sub(fetched_at_start.elapsed())).await;
    let mut after = Client::connect_with(upgrade(&broker, &new.sign(&claims("u2")))?).await?;
    after.subscribe(&["news.>"]).await?;
    assert_eq!(jwks.requests(), 2, "one fetch for the new key id");

    // The session opened under the old key stays, and both get events.
    assert_eq!(
        publish(&broker, "news.rotation", json!({"n": 1})).await?,
        202
    );
    for c in [&mut before, &mut after] {
        let e = c.event().await?;
        assert_eq!(e["data"]["n"], 1, "{e}");
    }
    // It refreshes in place with a token of the new key.
    let (ok, _) = before
        .request(json!({"op": "auth", "token": new.sign(&claims("u1"))}))
        .await?;
    assert_eq!(ok["type"], "ok", "{ok}");

    // The old key is gone for new connections.
    let (status, body, _) = refused(&broker, &old.sign(&claims("u1"))).await?;
    assert_eq!(status, 401, "{body}");

    // Unknown key ids cannot make the node hammer the provider: at most one fetch
    // per jwks_min_refresh_ms, however many tokens ask.
    let flood_start = Instant::now();
    let requests_before = jwks.requests();
    for i in 0..30 {
        let stranger = SigningKey::ed25519(&format!("unknown-{i}"))?;
        let (status, _, _) = refused(&broker, &stranger.sign(&claims("eve"))).await?;
        assert_eq!(status, 401);
    }
    let allowed = 1 + (flood_start.elapsed().as_millis() / MIN_REFRESH.as_millis()) as usize;
    let made = jwks.requests() - requests_before;
    ensure!(
        made <= allowed,
        "{made} fetches for 30 unknown key ids in {:?}",
        flood_start.elapsed()
    );

    // A new-key token arriving while the refresh is in flight waits for it instead
    // of being refused: several at once, right after another rotation.
    let newer = SigningKey::rsa("2027-01")?;
    jwks.publish(&[&new, &newer]);
    tokio::time::sleep(MIN_REFRESH).await;
    let requests_before = jwks.requests();
    let connects = (0..5).map(|i| {
        let req = upgrade(&broker, &newer.sign(&claims(&format!("w{i}"))));
        async move { Client::connect_with(req?).await }
    });
    for c in futures_util::future::join_all(connects).await {
        assert_eq!(c?.welcome["type"], "welcome");
    }
    assert_eq!(
        jwks.requests() - requests_before,
        1,
        "five tokens, one fetch"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_max_age_schedules_the_refresh() -> Result<()> {
    let first = SigningKey::ed25519("a")?;
    let jwks = JwksServer::start(&[&first]).await?;
    jwks.cache_control(Some("public, max-age=1"));
    let broker = start(
        &jwks,
        "jwks_min_refresh_ms = 500\njwks_max_refresh_ms = 600000\n",
    )?;
    broker.wait_readyz(200).await?;

    // With no token asking, the node fetches again every second as the provider
    // says, and so picks up a key before its first token arrives.
    let second = SigningKey::ed25519("b")?;
    jwks.publish(&[&first, &second]);
    let published = jwks.requests();
    eventually("two scheduled fetches", || jwks.requests() >= published + 2).await?;
    let c = Client::connect_with(upgrade(&broker, &second.sign(&claims("u1")))?).await?;
    assert_eq!(c.welcome["type"], "welcome");
    let log = broker.log_text();
    assert!(
        !log.contains("does not have"),
        "the schedule, not the token, brought the key:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_goes_down_leaves_the_last_keys_until_they_are_stale() -> Result<()> {
    let key = SigningKey::p256("k")?;
    let jwks = JwksServer::start(&[&key]).await?;
    let broker = start(
        &jwks,
        "jwks_min_refresh_ms = 200\njwks_max_refresh_ms = 1000\njwks_stale_ms = 5000\n",
    )?;
    broker.wait_readyz(200).await?;

    jwks.fail_with(Some(503));
    let failures = broker
        .metric("herald_jwks_fetches_total{result=\"error\"}")
        .await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while broker
        .metric("herald_jwks_fetches_total{result=\"error\"}")
        .await?
        <= failures
    {
        ensure!(Instant::now() < deadline, "no failed fetch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A failed fetch alone changes nothing a client or a load balancer sees.
    let (status, body) = broker.get("/readyz").await?;
    assert_eq!(
        status, 200,
        "fresh enough keys are not a problem yet: {body}"
    );
    assert_eq!(broker.metric("herald_jwks_stale").await?, 0.0);
    Client::connect_with(upgrade(&broker, &key.sign(&claims("u1")))?).await?;

    // Past jwks_stale_ms it shows, and says why; the old keys still verify.
    let reason = broker.wait_reason("jwks: the keys are").await?;
    assert!(reason.contains("HTTP 503"), "{reason}");
    assert_eq!(broker.metric("herald_jwks_stale").await?, 1.0);
    Client::connect_with(upgrade(&broker, &key.sign(&claims("u1")))?).await?;

    // Back up: ready again at the next retry.
    jwks.fail_with(None);
    broker.wait_readyz(200).await?;
    assert_eq!(broker.metric("herald_jwks_stale").await?, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_at_start_makes_the_node_unready_and_tokens_wait_with_503() -> Result<()> {
    let key = SigningKey::rsa("k")?;
    let jwks = JwksServer::start(&[&key]).await?;
    jwks.fail_with(Some(500));
    let broker = start(
        &jwks,
        "jwks_min_refresh_ms = 200\njwks_max_refresh_ms = 1000\n",
    )?;
    let reason = broker.wait_reason("last fetch failed").await?;
    assert!(reason.starts_with("jwks: no keys yet"), "{reason}");
    assert!(reason.contains("HTTP 500"), "{reason}");

    let token = key.sign(&claims("u1"));
    let (status, body, retry_after) = refused(&broker, &token).await?;
    assert_eq!(status, 503, "{body}");
    assert!(
        retry_after.parse::<u64>().is_ok(),
        "Retry-After: {retry_after:?}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("auth.jwks_url"),
        "{body}"
    );
    let (status, body) = ticket(&broker, &token).await?;
    assert_eq!(status, 503, "{body}");
    // First-message auth: 1013, come back later with the same token (4001 would
    // tell the client to drop it).
    let mut c = Client::open(broker.ws_url()).await?;
    c.send(json!({"op": "auth", "token": token})).await?;
    let closed = c.closed(Duration::from_secs(5)).await?;
    assert_eq!(closed.code, Some(1013), "{closed:?}");
    // API keys do not depend on the provider.
    assert_eq!(publish(&broker, "news.x", json!(1)).await?, 202);

    jwks.fail_with(None);
    broker.wait_readyz(200).await?;
    Client::connect_with(upgrade(&broker, &token)?).await?;
    Ok(())
}

#[test]
fn jwks_settings_are_checked_with_the_key_named() -> Result<()> {
    let base = "[auth]\nmode = \"jwt\"\njwks_url = \"https://idp.example.com/jwks\"\n";
    let e = config_error(&format!("{base}jwks_ca_file = \"/nonexistent/ca.pem\"\n"))?;
    assert!(e.contains("auth.jwks_ca_file"), "{e}");
    let e = config_error(&format!("{base}jwks_ca_file = \"/etc/hostname\"\n"))?;
    assert!(
        e.contains("auth.jwks_ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = config_error("[auth]\nmode = \"jwt\"\njwks_url = \"https://user:pw@idp/jwks\"\n")?;
    assert!(e.contains("auth.jwks_url") && !e.contains("pw@"), "{e}");
    Ok(())
}
