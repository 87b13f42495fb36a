//! Validation: what serde cannot check (ranges, addresses, combinations), pure: it
//! reads no file and builds no client. Every error names the key.

use std::net::SocketAddr;

use super::{invalid, Config, ConfigError, KafkaBridgeConfig};

/// Longest HTTP header deadline or keep-alive, in milliseconds (one hour).
const MAX_HTTP_TIMER_MS: u64 = 3_600_000;

/// Longest `server.drain_ms`: an hour, past which a drain is a misconfiguration.
const MAX_DRAIN_MS: u64 = 3_600_000;

impl Config {
    /// Checks what serde cannot: ranges, addresses, and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.admin_addr()?;
        let s = &self.session;
        if s.heartbeat_interval_ms == 0 {
            return Err(invalid(
                "session.heartbeat_interval_ms",
                0,
                "a positive number of milliseconds",
            ));
        }
        if s.heartbeat_timeout_ms == 0 {
            return Err(invalid(
                "session.heartbeat_timeout_ms",
                0,
                "a positive number of milliseconds",
            ));
        }
        if s.max_message_bytes < 128 {
            return Err(invalid(
                "session.max_message_bytes",
                s.max_message_bytes,
                "at least 128",
            ));
        }
        if s.queue_max_bytes < 1024 {
            return Err(invalid(
                "session.queue_max_bytes",
                s.queue_max_bytes,
                "at least 1024",
            ));
        }
        if s.max_subscriptions == 0 {
            return Err(invalid("session.max_subscriptions", 0, "at least 1"));
        }
        if s.rate_limit_per_s == 0 {
            return Err(invalid("session.rate_limit_per_s", 0, "at least 1"));
        }
        if s.rate_limit_burst == 0 {
            return Err(invalid("session.rate_limit_burst", 0, "at least 1"));
        }
        if self.server.drain_ms > MAX_DRAIN_MS {
            return Err(invalid(
                "server.drain_ms",
                self.server.drain_ms,
                "0 (no drain) to 3600000 milliseconds",
            ));
        }
        if self.server.ingest_capacity == 0 {
            return Err(invalid("server.ingest_capacity", 0, "at least 1"));
        }
        // Bounded above too: actix-web adds them to `Instant::now()`, which panics
        // on overflow for every connection.
        let timeout = self.server.client_request_timeout_ms;
        if !(1..=MAX_HTTP_TIMER_MS).contains(&timeout) {
            return Err(invalid(
                "server.client_request_timeout_ms",
                timeout,
                "1 to 3600000 milliseconds",
            ));
        }
        if self.server.keep_alive_ms > MAX_HTTP_TIMER_MS {
            return Err(invalid(
                "server.keep_alive_ms",
                self.server.keep_alive_ms,
                "0 (off) to 3600000 milliseconds",
            ));
        }
        if s.mailbox_capacity == 0 {
            return Err(invalid("session.mailbox_capacity", 0, "at least 1"));
        }
        // An echo is a reply: with the queue at least one message long, the echo of a
        // largest message fits even while the previous one is still being written.
        if self.server.conformance_echo && s.queue_max_bytes < s.max_message_bytes {
            return Err(invalid(
                "server.conformance_echo",
                true,
                &format!(
                    "false, or session.queue_max_bytes ({}) at least session.max_message_bytes ({}) so that echoes fit the outbound queue",
                    s.queue_max_bytes, s.max_message_bytes
                ),
            ));
        }
        if self.history.size > 0 && self.history.ttl_ms == 0 {
            return Err(invalid(
                "history.ttl_ms",
                0,
                "a positive number of milliseconds (or history.size = 0)",
            ));
        }
        if self.publish.max_body_bytes == 0 {
            return Err(invalid(
                "publish.max_body_bytes",
                0,
                "a positive number of bytes",
            ));
        }
        if let Err(i) = crate::http::forwarded::TrustedProxies::parse(&self.server.trusted_proxies)
        {
            return Err(invalid(
                &format!("server.trusted_proxies[{i}]"),
                &self.server.trusted_proxies[i],
                "an IP address or a CIDR network like 10.0.0.0/8",
            ));
        }
        for (i, o) in self.server.allowed_origins.iter().enumerate() {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(invalid(
                    &format!("server.allowed_origins[{i}]"),
                    o,
                    "an origin like `https://app.example.com` (scheme, host, optional port, no path)",
                ));
            }
        }
        self.validate_auth()?;
        self.validate_tls()?;
        let mut names = std::collections::BTreeSet::new();
        for (i, b) in self.bridge.nats.iter().enumerate() {
            let key = |k: &str| format!("bridge.nats[{i}].{k}");
            if b.name.is_empty() || !names.insert(b.name.clone()) {
                return Err(invalid(
                    &key("name"),
                    &b.name,
                    "a name that no other bridge has",
                ));
            }
            if b.url.trim().is_empty() {
                return Err(invalid(
                    &key("url"),
                    &b.url,
                    "a NATS URL like nats://127.0.0.1:4222",
                ));
            }
            if b.subjects.is_empty() {
                return Err(invalid(&key("subjects"), "[]", "at least one subject"));
            }
            for s in &b.subjects {
                if s.is_empty()
                    || s.contains(char::is_whitespace)
                    || s.split('.').any(str::is_empty)
                {
                    return Err(invalid(
                        &key("subjects"),
                        s,
                        "NATS subjects like `events.>`",
                    ));
                }
            }
            let methods: Vec<&str> = [
                ("user", !b.user.is_empty() || !b.password.is_empty()),
                ("token", !b.token.is_empty()),
                ("nkey", !b.nkey.is_empty()),
                ("creds_file", !b.creds_file.is_empty()),
            ]
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| *name)
            .collect();
            if let [_, second, ..] = methods.as_slice() {
                return Err(ConfigError::at(
                    key(second),
                    format!(
                        "only one NATS authentication method may be set; this entry sets {}",
                        methods.join(" and ")
                    ),
                ));
            }
            if b.subscription_capacity == 0 {
                return Err(invalid(&key("subscription_capacity"), 0, "at least 1"));
            }
            if b.jetstream.as_ref().is_some_and(|j| j.stream.is_empty()) {
                return Err(invalid(
                    &key("jetstream.stream"),
                    "",
                    "the name of an existing stream",
                ));
            }
        }
        for (i, b) in self.bridge.kafka.iter().enumerate() {
            self.validate_kafka(i, b, &mut names)?;
        }
        if !self.cluster.backplane.is_empty() {
            self.validate_backplane()?;
            self.validate_cluster_history()?;
        } else if self.cluster.history == super::HistoryMode::Jetstream {
            return Err(invalid(
                "cluster.history",
                "jetstream",
                "`local` unless cluster.backplane is set (the stream lives on the backplane's NATS)",
            ));
        } else if !self.cluster.subject_prefix.is_empty() {
            return Err(invalid(
                "cluster.subject_prefix",
                &self.cluster.subject_prefix,
                "empty unless cluster.backplane is set (it has no effect without one)",
            ));
        }
        Ok(())
    }

    /// `[auth]`: a known mode; for `jwt`, a usable key, sane lifetimes and valid
    /// default grants. Secrets set while the mode is `none` are an error: Herald would
    /// otherwise run open while its operator believes it is protected.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        for (i, p) in a.default_subscribe.iter().enumerate() {
            if crate::topic::validate_pattern(p).is_err() {
                return Err(invalid(
                    &format!("auth.default_subscribe[{i}]"),
                    p,
                    "a topic pattern like `orders.*`",
                ));
            }
        }
        for (i, p) in a.default_publish.iter().enumerate() {
            if crate::topic::validate_pattern(p).is_err() {
                return Err(invalid(
                    &format!("auth.default_publish[{i}]"),
                    p,
                    "a topic pattern like `chat.*`",
                ));
            }
        }
        if a.ticket_rate_per_s > 0 && a.ticket_rate_burst == 0 {
            return Err(invalid(
                "auth.ticket_rate_burst",
                0,
                "at least 1 when auth.ticket_rate_per_s is set",
            ));
        }
        if !(1_000..=3_600_000).contains(&a.ticket_ttl_ms) {
            return Err(invalid(
                "auth.ticket_ttl_ms",
                a.ticket_ttl_ms,
                "1000 to 3600000",
            ));
        }
        match a.mode.as_str() {
            "none" => {
                let set = [
                    ("auth.jwt_secret", !a.jwt_secret.is_empty()),
                    (
                        "auth.jwt_public_key_file",
                        !a.jwt_public_key_file.is_empty(),
                    ),
                    ("auth.jwks_url", !a.jwks_url.is_empty()),
                    ("auth.api_keys", !a.api_keys.is_empty()),
                ];
                if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                    return Err(invalid(
                        "auth.mode",
                        "none",
                        &format!("\"jwt\" since {key} is set (with mode \"none\" Herald would accept everyone)"),
                    ));
                }
                Ok(())
            }
            "jwt" => {
                if a.jwt_secret.is_empty()
                    && a.jwt_public_key_file.is_empty()
                    && a.jwks_url.is_empty()
                {
                    return Err(ConfigError::at(
                        "auth.jwt_secret".into(),
                        "none of jwt_secret, jwt_public_key_file and jwks_url is set".into(),
                    ));
                }
                self.validate_jwks()?;
                if !a.jwt_secret.is_empty() && a.jwt_secret.len() < 32 {
                    return Err(invalid(
                        "auth.jwt_secret",
                        "***",
                        "at least 32 bytes (HS256 needs a key as long as its hash)",
                    ));
                }
                for (i, k) in a.api_keys.iter().enumerate() {
                    if k.len() < 16 {
                        return Err(invalid(
                            &format!("auth.api_keys[{i}]"),
                            "***",
                            "at least 16 bytes",
                        ));
                    }
                }
                Ok(())
            }
            other => Err(invalid("auth.mode", other, "\"none\" or \"jwt\"")),
        }
    }

    /// `auth.jwks_*`: a URL Herald can fetch, and refresh bounds in order (the keys
    /// must be able to turn stale only after a refresh has had its chance).
    fn validate_jwks(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        if a.jwks_url.is_empty() {
            if !a.jwks_ca_file.is_empty() {
                return Err(invalid(
                    "auth.jwks_ca_file",
                    &a.jwks_ca_file,
                    "empty unless auth.jwks_url is set (it has no effect without one)",
                ));
            }
            return Ok(());
        }
        crate::auth::jwks::parse_url(&a.jwks_url).map_err(|why| {
            // Never echo credentials someone put in the URL.
            let shown = if a.jwks_url.contains('@') {
                "***"
            } else {
                &a.jwks_url
            };
            invalid("auth.jwks_url", shown, why)
        })?;
        if !(100..=3_600_000).contains(&a.jwks_min_refresh_ms) {
            return Err(invalid(
                "auth.jwks_min_refresh_ms",
                a.jwks_min_refresh_ms,
                "100 to 3600000",
            ));
        }
        if !(a.jwks_min_refresh_ms..=86_400_000).contains(&a.jwks_max_refresh_ms) {
            return Err(invalid(
                "auth.jwks_max_refresh_ms",
                a.jwks_max_refresh_ms,
                "auth.jwks_min_refresh_ms to 86400000",
            ));
        }
        if a.jwks_stale_ms <= a.jwks_max_refresh_ms {
            return Err(invalid(
                "auth.jwks_stale_ms",
                a.jwks_stale_ms,
                "more than auth.jwks_max_refresh_ms (keys would turn stale between two refreshes)",
            ));
        }
        Ok(())
    }

    /// `server.tls_cert_file` and `server.tls_key_file`: both or neither (whether
    /// rustls can load them is checked when the listener's TLS is built).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        match (s.tls_cert_file.is_empty(), s.tls_key_file.is_empty()) {
            (true, true) => Ok(()),
            (false, true) => Err(invalid(
                "server.tls_key_file",
                "(empty)",
                "the private key of server.tls_cert_file",
            )),
            (true, false) => Err(invalid(
                "server.tls_cert_file",
                "(empty)",
                "the certificate of server.tls_key_file",
            )),
            (false, false) => Ok(()),
        }
    }

    /// One `[[bridge.kafka]]` entry: a unique name, brokers, Kafka topic names, a
    /// template that makes valid Herald topics of them, and properties librdkafka
    /// accepts (checked without connecting).
    fn validate_kafka(
        &self,
        i: usize,
        b: &KafkaBridgeConfig,
        names: &mut std::collections::BTreeSet<String>,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("bridge.kafka[{i}].{k}");
        if b.name.is_empty() || !names.insert(b.name.clone()) {
            return Err(invalid(
                &key("name"),
                &b.name,
                "a name that no other bridge has",
            ));
        }
        if b.brokers.trim().is_empty() {
            return Err(invalid(
                &key("brokers"),
                &b.brokers,
                "host:port of one or more brokers, comma-separated",
            ));
        }
        if b.topics.is_empty() {
            return Err(invalid(&key("topics"), "[]", "at least one Kafka topic"));
        }
        for t in &b.topics {
            let kafka_name = !t.is_empty()
                && t.len() <= 249
                && t.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
            if !kafka_name {
                return Err(invalid(
                    &key("topics"),
                    t,
                    "Kafka topic names (1 to 249 of `a-z A-Z 0-9 . _ -`, no wildcards)",
                ));
            }
        }
        if b.metadata_refresh_ms < 100 {
            return Err(invalid(
                &key("metadata_refresh_ms"),
                b.metadata_refresh_ms,
                "at least 100",
            ));
        }
        #[cfg(not(feature = "kafka"))]
        return Err(invalid(
            "bridge.kafka",
            &b.name,
            "no entries (this build has no Kafka bridge: build with the `kafka` feature)",
        ));
        #[cfg(feature = "kafka")]
        Ok(())
    }

    /// The backplane must name a NATS bridge whose subscriptions bring every
    /// publish back under the same topic name, or nodes would miss or rename events.
    fn validate_backplane(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if !is_name(&c.name) {
            return Err(invalid(
                "cluster.name",
                &c.name,
                "a NATS subject token: letters, digits, `_` and `-`",
            ));
        }
        let bucket = &c.tickets_bucket;
        if !is_name(bucket) {
            return Err(invalid(
                "cluster.tickets_bucket",
                bucket,
                "a JetStream bucket name: letters, digits, `_` and `-`",
            ));
        }
        let Some(b) = self.bridge.nats.iter().find(|b| b.name == c.backplane) else {
            return Err(invalid(
                "cluster.backplane",
                &c.backplane,
                "the name of a [[bridge.nats]] entry",
            ));
        };
        let prefix_tokens = c
            .subject_prefix
            .strip_suffix('.')
            .unwrap_or(&c.subject_prefix);
        if !c.subject_prefix.is_empty()
            && (!c.subject_prefix.ends_with('.')
                || crate::topic::validate_topic(prefix_tokens).is_err())
        {
            return Err(invalid(
                "cluster.subject_prefix",
                &c.subject_prefix,
                "empty, or topic tokens ending with `.` (no wildcards), like `herald.`",
            ));
        }
        let all = format!("{}>", c.subject_prefix);
        if !b.subjects.iter().any(|s| crate::topic::covers(s, &all)) {
            return Err(invalid(
                "cluster.backplane",
                &c.backplane,
                &format!("a bridge that subscribes to `{all}` (its subjects must cover every backplane subject)"),
            ));
        }
        if b.strip_prefix != c.subject_prefix || !b.topic_prefix.is_empty() {
            return Err(invalid(
                "cluster.subject_prefix",
                &c.subject_prefix,
                &format!(
                    "the backplane bridge `{}` to have strip_prefix = \"{}\" and no topic_prefix, so subjects map back to the same topics",
                    b.name, c.subject_prefix
                ),
            ));
        }
        Ok(())
    }

    /// With `cluster.history = "jetstream"`: a stream Herald can name and size, and
    /// a backplane bridge that reads nothing but the backplane's subjects (it reads
    /// them from the stream, so other subjects would be lost).
    fn validate_cluster_history(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.history != super::HistoryMode::Jetstream {
            return Ok(());
        }
        if !is_name(&c.history_stream) || c.history_stream.len() > 32 {
            return Err(invalid(
                "cluster.history_stream",
                &c.history_stream,
                "a JetStream stream name of at most 32 letters, digits, `_` and `-`",
            ));
        }
        if !(1..=5).contains(&c.replicas) {
            return Err(invalid(
                "cluster.replicas",
                c.replicas.to_string().as_str(),
                "1 to 5 (JetStream's limit)",
            ));
        }
        if c.subject_prefix.is_empty() {
            return Err(invalid(
                "cluster.subject_prefix",
                "",
                "a prefix like `herald.` with cluster.history = \"jetstream\" (the stream holds the subjects under it)",
            ));
        }
        if self.history.size == 0 {
            return Err(invalid(
                "history.size",
                "0",
                "at least 1 with cluster.history = \"jetstream\" (each subject keeps that many events in the stream)",
            ));
        }
        let all = format!("{}>", c.subject_prefix);
        let bridge = self.bridge.nats.iter().find(|b| b.name == c.backplane);
        if let Some(b) = bridge.filter(|b| b.subjects != [all.clone()] || b.jetstream.is_some()) {
            return Err(invalid(
                "cluster.backplane",
                &b.name,
                &format!(
                    "with cluster.history = \"jetstream\", a bridge whose subjects are exactly [\"{all}\"] and that has no jetstream start of its own (it reads the history stream)"
                ),
            ));
        }
        Ok(())
    }

    /// `server.listen` as a socket address (`localhost:8080` resolves too).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        socket_addr("server.listen", &self.server.listen)
    }

    /// `server.admin_listen` as a socket address, when set.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let admin = &self.server.admin_listen;
        if admin.is_empty() {
            return Ok(None);
        }
        let addr = socket_addr("server.admin_listen", admin)?;
        if addr.port() != 0 && Some(addr) == self.listen_addr().ok() {
            return Err(invalid(
                "server.admin_listen",
                admin,
                "an address other than server.listen (or empty, to serve everything there)",
            ));
        }
        Ok(Some(addr))
    }
}

/// Whether `s` is a non-empty run of letters, digits, `_` and `-`: a NATS subject
/// token, and a JetStream bucket name.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// `value` of `key` as a socket address (`localhost:8080` resolves too).
fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs as _;
    value
        .parse()
        .ok()
        .or_else(|| value.to_socket_addrs().ok().and_then(|mut a| a.next()))
        .ok_or_else(|| invalid(key, value, "host:port, e.g. 127.0.0.1:8080"))
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{file, no_env};
    use crate::config::*;

    #[test]
    fn auth_settings_are_refused_by_name() {
        let load = |text: &str| {
            Config::load(Some(file(text).path()), no_env())
                .expect_err(text)
                .to_string()
        };
        let msg = load("[auth]\nmode = \"jwt\"\n");
        assert!(msg.contains("auth.jwt_secret"), "jwt needs a key: {msg}");
        let msg = load("[auth]\napi_keys = [\"0123456789abcdef\"]\n");
        assert!(msg.contains("auth.mode"), "keys without jwt mode: {msg}");
        let msg = load("[auth]\ndefault_subscribe = [\"a..b\"]\n");
        assert!(msg.contains("auth.default_subscribe[0]"), "{msg}");
        let ok = "[auth]\nmode = \"jwt\"\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n";
        assert!(Config::load(Some(file(ok).path()), no_env()).is_ok());
        let jwks = "[auth]\nmode = \"jwt\"\njwks_url = \"https://idp.example.com/jwks\"\n";
        assert!(
            Config::load(Some(file(jwks).path()), no_env()).is_ok(),
            "a JWKS alone is a key"
        );
        for (extra, key) in [
            ("jwks_url = \"ftp://idp/jwks\"", "auth.jwks_url"),
            ("jwks_url = \"https://u:p@idp/jwks\"", "auth.jwks_url"),
            ("jwks_min_refresh_ms = 10", "auth.jwks_min_refresh_ms"),
            ("jwks_max_refresh_ms = 1000", "auth.jwks_max_refresh_ms"),
            ("jwks_stale_ms = 300000", "auth.jwks_stale_ms"),
        ] {
            let base = if extra.starts_with("jwks_url") {
                "[auth]\nmode = \"jwt\"\n"
            } else {
                jwks
            };
            let msg = load(&format!("{base}{extra}\n"));
            assert!(msg.contains(key), "{extra}: {msg}");
        }
        let msg = load("[auth]\njwks_url = \"https://idp.example.com/jwks\"\n");
        assert!(msg.contains("auth.mode"), "a JWKS without jwt mode: {msg}");
        let msg = load(&format!("{ok}jwks_ca_file = \"/etc/ssl/idp.pem\"\n"));
        assert!(
            msg.contains("auth.jwks_ca_file"),
            "a CA without a JWKS: {msg}"
        );
    }

    #[test]
    fn cluster_settings_are_checked() {
        let load = |text: &str| Config::load(Some(file(text).path()), no_env());
        let node = |prefix: &str| {
            format!(
                "[cluster]\nbackplane = \"bus\"\nsubject_prefix = \"{prefix}\"\n[[bridge.nats]]\nname = \"bus\"\nsubjects = [\">\"]\nstrip_prefix = \"{prefix}\"\n"
            )
        };
        assert!(load(&node("herald.")).is_ok());
        assert!(load(&node("")).is_ok());
        for bad in ["*.", "herald", "a..b."] {
            let msg = load(&node(bad)).expect_err(bad).to_string();
            assert!(msg.contains("cluster.subject_prefix"), "{bad}: {msg}");
        }
        let msg = load("[cluster]\nsubject_prefix = \"herald.\"\n")
            .expect_err("no backplane")
            .to_string();
        assert!(msg.contains("cluster.subject_prefix"), "{msg}");
        // URLs are parsed once, when the bridge is prepared at start.
        let build =
            |text: &str| load(text).and_then(|c| crate::broker::Components::build(&c).map(drop));
        let msg = build("[[bridge.nats]]\nurl = \"nats://a:notaport\"\n")
            .expect_err("url")
            .to_string();
        assert!(msg.contains("bridge.nats[0].url"), "{msg}");
        assert!(
            build("[[bridge.nats]]\nurl = \"nats://127.0.0.1:4222, nats://127.0.0.1:4223\"\n")
                .is_ok()
        );
    }

    #[test]
    fn nats_bridges_are_validated_by_key() {
        let load = |text: &str| Config::load(Some(file(text).path()), no_env());
        let c = load("[[bridge.nats]]\njetstream = { stream = \"E\", deliver = \"all\" }\n")
            .expect("jetstream");
        assert_eq!(
            c.bridge.nats[0].jetstream.as_ref().map(|j| j.deliver),
            Some(JetStreamDeliver::All)
        );
        let msg = load("[[bridge.nats]]\njetstream = { stream = \"E\", deliver = \"latest\" }\n")
            .expect_err("bad deliver")
            .to_string();
        assert!(
            msg.contains("bridge.nats[0].jetstream.deliver") && msg.contains("latest"),
            "{msg}"
        );
        let msg = load("[[bridge.nats]]\nsubjects = [\"a..b\"]\n")
            .expect_err("subject")
            .to_string();
        assert!(
            msg.contains("bridge.nats[0].subjects") && msg.contains("a..b"),
            "{msg}"
        );
        let msg = load("[[bridge.nats]]\n[[bridge.nats]]\n")
            .expect_err("names")
            .to_string();
        assert!(msg.contains("bridge.nats[1].name"), "{msg}");
        let c =
            load("[[bridge.nats]]\nurl = \"nats://127.0.0.1:4222\"\npassword = \"pw-secret\"\n")
                .expect("a NATS bridge is valid");
        assert_eq!(c.bridge.nats[0].subjects, vec!["events.>".to_string()]);
        assert!(!c.to_masked_toml().contains("pw-secret"));
    }

    #[test]
    fn the_admin_listener_is_an_address_of_its_own() {
        let load = |server: &str| {
            Config::load(
                Some(file(&format!("[server]\n{server}\n")).path()),
                no_env(),
            )
        };
        let c = load("admin_listen = \"127.0.0.1:9090\"").expect("valid");
        assert_eq!(c.admin_addr().expect("valid").map(|a| a.port()), Some(9090));
        assert_eq!(
            load("").expect("default").admin_addr().expect("valid"),
            None
        );
        for bad in [
            "admin_listen = \"9090\"",
            "admin_listen = \"127.0.0.1:8080\"",
        ] {
            let msg = load(bad).expect_err(bad).to_string();
            assert!(msg.contains("server.admin_listen"), "{bad}: {msg}");
        }
        // Two free ports picked by the system are two addresses.
        assert!(load("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"").is_ok());
    }

    #[test]
    fn one_nats_authentication_method_per_bridge() {
        let load = |auth: &str| {
            Config::load(
                Some(file(&format!("[[bridge.nats]]\n{auth}\n")).path()),
                no_env(),
            )
        };
        for one in [
            "user = \"u\"\npassword = \"p\"",
            "token = \"t\"",
            "nkey = \"SUAXXX\"",
            "creds_file = \"/x.creds\"",
        ] {
            assert!(load(one).is_ok(), "{one}");
        }
        for (two, key) in [
            ("user = \"u\"\ntoken = \"t\"", "bridge.nats[0].token"),
            ("token = \"t\"\nnkey = \"SUAXXX\"", "bridge.nats[0].nkey"),
            (
                "nkey = \"SUAXXX\"\ncreds_file = \"/x\"",
                "bridge.nats[0].creds_file",
            ),
            (
                "password = \"p\"\ncreds_file = \"/x\"",
                "bridge.nats[0].creds_file",
            ),
        ] {
            let msg = load(two).expect_err(two).to_string();
            assert!(
                msg.contains(key) && msg.contains("only one"),
                "{two}: {msg}"
            );
            assert!(!msg.contains("SUAXXX"), "never a secret: {msg}");
        }
    }

    #[test]
    fn origins_must_be_origins() {
        let mut c = Config::default();
        c.server.allowed_origins = vec!["https://ok.example".into(), "ok.example".into()];
        let msg = c.validate().expect_err("bad origin").to_string();
        assert!(msg.contains("server.allowed_origins[1]"), "{msg}");
    }

    #[test]
    fn conformance_echo_is_off_by_default_and_needs_room_for_echoes() {
        let load = |text: &str| Config::load(Some(file(text).path()), no_env());
        assert!(!Config::default().server.conformance_echo);
        let c = load("[server]\nconformance_echo = true\n").expect("the defaults leave room");
        assert!(c.server.conformance_echo);
        let msg =
            load("[server]\nconformance_echo = true\n[session]\nmax_message_bytes = 2097152\n")
                .expect_err("an echo larger than the queue")
                .to_string();
        assert!(
            msg.contains("server.conformance_echo") && msg.contains("queue_max_bytes"),
            "{msg}"
        );
        let msg = load("[server]\nconformance_echo = \"yes\"\n")
            .expect_err("not a boolean")
            .to_string();
        assert!(msg.contains("server.conformance_echo"), "{msg}");
    }

    #[test]
    fn http_timers_are_bounded() {
        let c = Config::load(None, no_env()).expect("defaults");
        assert_eq!(c.server.client_request_timeout_ms, 5000);
        assert_eq!(c.server.keep_alive_ms, 5000);
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(Config::load(None, env("HERALD_SERVER__KEEP_ALIVE_MS", "0")).is_ok());
        for (var, value) in [
            ("HERALD_SERVER__CLIENT_REQUEST_TIMEOUT_MS", "0"),
            ("HERALD_SERVER__CLIENT_REQUEST_TIMEOUT_MS", "3600001"),
            // Added to an Instant by actix-web, this would panic on every connection.
            ("HERALD_SERVER__KEEP_ALIVE_MS", "9223372036854775807"),
        ] {
            let msg = Config::load(None, env(var, value))
                .expect_err(value)
                .to_string();
            let key = var["HERALD_SERVER__".len()..].to_ascii_lowercase();
            assert!(msg.contains(&format!("server.{key}")), "{msg}");
        }
    }
}
