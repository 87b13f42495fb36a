//! End-to-end tests of authentication (`auth.mode = "jwt"`), permissions, tickets,
//! API keys, TLS and log redaction, against the real binary over real sockets.
//! Keys and certificates are made at test time.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context as _, Result};
use herald_e2e::{config, Broker, Client};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
const API_KEY: &str = "api-key-for-tests-0001";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An HS256 token signed with [`SECRET`].
fn token(claims: Value) -> String {
    herald_e2e::hs256(SECRET, &claims)
}

/// A user token valid for a minute with the given grants.
fn user(sub: &str, subscribe: &[&str], publish: &[&str]) -> String {
    token(json!({"sub": sub, "exp": now() + 60,
                 "herald": {"subscribe": subscribe, "publish": publish}}))
}

fn jwt_config(extra: &str) -> String {
    config(
        "",
        &format!(
            "[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\n{extra}\n"
        ),
    )
}

/// An upgrade request to `broker`'s `/ws{query}` with an optional Bearer token.
fn ws_request(
    broker: &Broker,
    query: &str,
    bearer: Option<&str>,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let mut req = format!("{}{query}", broker.ws_url()).into_client_request()?;
    if let Some(t) = bearer {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {t}"))?,
        );
    }
    Ok(req)
}

/// The HTTP status of a refused upgrade (and its JSON body).
async fn refused(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<(u16, Value)> {
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => anyhow::bail!("the upgrade was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body = res
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            Ok((res.status().as_u16(), body))
        }
        Err(e) => anyhow::bail!("unexpected error: {e}"),
    }
}

/// `method path` on the broker with an optional Bearer credential.
async fn api(
    broker: &Broker,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", broker.http()));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await?;
    let status = res.status().as_u16();
    let text = res.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_on_the_upgrade_grants_exactly_its_patterns() -> Result<()> {
    let broker = Broker::start(&jwt_config(""))?;
    let t = user("alice", &["orders.*", "news.>"], &["chat.*"]);
    let mut c = Client::connect_with(ws_request(&broker, "", Some(&t))?).await?;
    c.subscribe(&["orders.*"]).await?;
    for forbidden in ["orders.>", "admin.x", ">"] {
        let (reply, _) = c
            .request(json!({"op": "subscribe", "topics": [forbidden]}))
            .await?;
        assert_eq!(reply["type"], "error", "{forbidden}: {reply}");
        assert_eq!(reply["code"], "forbidden", "{forbidden}: {reply}");
    }
    let (reply, _) = c
        .request(json!({"op": "publish", "topic": "orders.eu", "data": 1}))
        .await?;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let (reply, _) = c
        .request(json!({"op": "publish", "topic": "chat.room1", "data": 1}))
        .await?;
    assert_eq!(reply["type"], "ok", "{reply}");
    // HTTP publish through an API key reaches the permitted subscription.
    let (status, _) = api(
        &broker,
        reqwest::Method::POST,
        "/api/publish",
        Some(API_KEY),
        Some(json!({"topic": "orders.eu", "data": {"id": 1}})),
    )
    .await?;
    assert_eq!(status, 202);
    assert_eq!(c.event().await?["topic"], "orders.eu");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_on_the_upgrade_are_a_401_before_any_frame() -> Result<()> {
    let broker = Broker::start(&jwt_config(""))?;
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 60}),
        &EncodingKey::from_secret(b"another secret, 32 bytes long..."),
    )?;
    let cases = [
        (wrong_key.as_str(), "bad signature"),
        (&*token(json!({"exp": now() - 5})), "expired"),
        (&*token(json!({"sub": "x"})), "missing exp"),
        ("garbage", "not a JWT"),
    ]
    .map(|(t, why)| (t.to_owned(), why));
    for (t, why) in cases {
        let (status, body) = refused(ws_request(&broker, "", Some(&t))?).await?;
        assert_eq!(status, 401, "{why}");
        assert_eq!(body["error"]["code"], "unauthorized", "{why}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{message} should say {why}");
    }
    // A token in the URL is refused even when valid: URLs end up in logs.
    let good = user("bob", &[">"], &[]);
    let (status, body) = refused(ws_request(&broker, &format!("?token={good}"), None)?).await?;
    assert_eq!(status, 401);
    assert!(
        body.to_string().contains("never accepted in the URL"),
        "{body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_message_auth_within_the_timeout() -> Result<()> {
    let broker = Broker::start(&(jwt_config("") + "[session]\nauth_timeout_ms = 800\n"))?;
    // Nothing is served before auth.
    let mut c = Client::open(ws_request(&broker, "", None)?).await?;
    let (reply, _) = c
        .request(json!({"op": "subscribe", "topics": ["a"]}))
        .await?;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    c.send(json!({"op": "auth", "token": user("carol", &["a"], &[])}))
        .await?;
    assert_eq!(c.recv().await?["type"], "welcome");
    c.subscribe(&["a"]).await?;

    // A bad token closes with 4001.
    let mut bad = Client::open(ws_request(&broker, "", None)?).await?;
    bad.send(json!({"op": "auth", "token": "nope"})).await?;
    assert_eq!(bad.closed(Duration::from_secs(5)).await?.code, Some(4001));

    // Silence past auth_timeout_ms closes with 4001 too.
    let mut idle = Client::open(ws_request(&broker, "", None)?).await?;
    let closed = idle.closed(Duration::from_secs(5)).await?;
    assert_eq!(closed.code, Some(4001));
    assert!(closed.reason.contains("timeout"), "{closed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_when_the_token_expires_unless_refreshed() -> Result<()> {
    let broker = Broker::start(&jwt_config(""))?;
    let short = token(json!({"sub": "dave", "exp": now() + 2}));
    let mut expiring = Client::connect_with(ws_request(&broker, "", Some(&short))?).await?;
    let mut refreshed = Client::connect_with(ws_request(&broker, "", Some(&short))?).await?;
    // Refreshing with another subject's token is refused; a bad refresh is an
    // error reply, and the session goes on.
    let (reply, _) = refreshed
        .request(json!({"op": "auth", "token": user("mallory", &[">"], &[">"])}))
        .await?;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let (reply, _) = refreshed
        .request(json!({"op": "auth", "token": "garbage"}))
        .await?;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    let (reply, _) = refreshed
        .request(json!({"op": "auth", "token": token(json!({"sub": "dave", "exp": now() + 60}))}))
        .await?;
    assert_eq!(reply["type"], "ok", "{reply}");

    let closed = expiring.closed(Duration::from_secs(8)).await?;
    assert_eq!(closed.code, Some(4001));
    assert_eq!(closed.reason, "token expired");
    // The refreshed session outlives the first token.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (reply, _) = refreshed.request(json!({"op": "ping"})).await?;
    assert_eq!(reply["type"], "pong");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_single_use_short_lived_and_carry_the_token_identity() -> Result<()> {
    let broker = Broker::start(&jwt_config("ticket_ttl_ms = 1000"))?;
    let t = user("erin", &["orders.*"], &[]);
    let (status, body) = api(
        &broker,
        reqwest::Method::POST,
        "/api/tickets",
        Some(&t),
        None,
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["expires_in_ms"], 1000);
    let ticket = body["ticket"].as_str().context("ticket")?.to_owned();
    let mut c =
        Client::connect_with(ws_request(&broker, &format!("?ticket={ticket}"), None)?).await?;
    c.subscribe(&["orders.*"]).await?;
    let (reply, _) = c
        .request(json!({"op": "subscribe", "topics": ["news"]}))
        .await?;
    assert_eq!(
        reply["code"], "forbidden",
        "the ticket carries the token's grants"
    );
    // Reused.
    let (status, _) = refused(ws_request(&broker, &format!("?ticket={ticket}"), None)?).await?;
    assert_eq!(status, 401);
    // Expired.
    let late = herald_e2e::ticket(&broker, &t).await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = refused(ws_request(&broker, &format!("?ticket={late}"), None)?).await?;
    assert_eq!(status, 401);
    assert!(body.to_string().contains("expired"), "{body}");
    // Unknown.
    let (status, _) = refused(ws_request(&broker, "?ticket=made-up", None)?).await?;
    assert_eq!(status, 401);
    // Only JWT holders get tickets: an API key is 403, nothing is 401.
    let (status, body) = api(
        &broker,
        reqwest::Method::POST,
        "/api/tickets",
        Some(API_KEY),
        None,
    )
    .await?;
    assert_eq!(status, 403, "{body}");
    let (status, _) = api(&broker, reqwest::Method::POST, "/api/tickets", None, None).await?;
    assert_eq!(status, 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_an_api_key_or_a_permitted_jwt() -> Result<()> {
    let broker = Broker::start(&jwt_config(""))?;
    let publish = |bearer: Option<String>| {
        let broker = &broker;
        async move {
            api(
                broker,
                reqwest::Method::POST,
                "/api/publish",
                bearer.as_deref(),
                Some(json!({"topic": "chat.room1", "data": 1})),
            )
            .await
        }
    };
    let (status, body) = publish(None).await?;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(publish(Some("api-key-for-tests-0002".into())).await?.0, 401);
    assert_eq!(publish(Some(API_KEY.into())).await?.0, 202);
    assert_eq!(publish(Some(user("f", &[], &["chat.*"]))).await?.0, 202);
    let (status, body) = publish(Some(user("g", &[">"], &["news.*"]))).await?;
    assert_eq!(status, 403, "{body}");
    let (status, _) = api(
        &broker,
        reqwest::Method::GET,
        "/api/topics",
        Some(API_KEY),
        None,
    )
    .await?;
    assert_eq!(status, 200);
    let (status, _) = api(&broker, reqwest::Method::GET, "/api/topics", None, None).await?;
    assert_eq!(status, 401);
    // Health endpoints stay open for load balancers.
    assert_eq!(broker.get("/healthz").await?.0, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_ticket_key_or_secret_reaches_the_logs_at_trace_level() -> Result<()> {
    // Every crate at trace: actix-web, actix-http (h1 parsing), Herald itself.
    let broker = Broker::start_with_env(&jwt_config(""), &[("RUST_LOG", "trace")])?;
    let t = user("henry", &[">"], &[">"]);
    let ticket = herald_e2e::ticket(&broker, &t).await?;
    let mut c =
        Client::connect_with(ws_request(&broker, &format!("?ticket={ticket}"), None)?).await?;
    c.send(json!({"op": "auth", "token": t})).await?;
    let _ = c.recv().await?;
    let _ = Client::connect_with(ws_request(&broker, "", Some(&t))?).await?;
    let _ = refused(ws_request(&broker, &format!("?ticket={ticket}"), None)?).await?;
    let _ = refused(ws_request(&broker, &format!("?token={t}"), None)?).await?;
    let _ = api(
        &broker,
        reqwest::Method::POST,
        "/api/publish",
        Some(API_KEY),
        Some(json!({"topic": "a", "data": 1})),
    )
    .await?;
    let _ = api(
        &broker,
        reqwest::Method::POST,
        "/api/publish",
        Some("wrong-key-wrong-key"),
        Some(json!({"topic": "a", "data": 1})),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = broker.log_text();
    ensure!(
        logs.lines().count() > 10,
        "trace logging produced lines: {logs}"
    );
    let signature = t.rsplit('.').next().unwrap_or_default();
    for (what, secret) in [
        ("token", t.as_str()),
        ("token signature", signature),
        ("ticket", ticket.as_str()),
        ("API key", API_KEY),
        ("wrong API key", "wrong-key-wrong-key"),
        ("JWT secret", SECRET),
    ] {
        ensure!(
            !logs.contains(secret),
            "the {what} appears in the logs:\n{logs}"
        );
    }
    ensure!(
        !logs.to_ascii_lowercase().contains("bearer "),
        "an Authorization value is logged"
    );
    Ok(())
}

#[test]
fn auth_settings_are_checked_at_start() -> Result<()> {
    let check = herald_e2e::config_error;
    let e = check("[auth]\nmode = \"jwt\"\n")?;
    ensure!(e.contains("auth.jwt_secret"), "{e}");
    let e = check("[auth]\nmode = \"jwt\"\njwt_secret = \"short\"\n")?;
    ensure!(
        e.contains("auth.jwt_secret") && e.contains("32 bytes") && !e.contains("short"),
        "{e}"
    );
    let e = check(&format!("[auth]\njwt_secret = \"{SECRET}\"\n"))?;
    ensure!(
        e.contains("auth.mode"),
        "a secret with mode none would run open: {e}"
    );
    let e = check("[auth]\nmode = \"jwt\"\njwt_public_key_file = \"/nonexistent.pem\"\n")?;
    ensure!(e.contains("auth.jwt_public_key_file"), "{e}");
    let e = check("[auth]\nmode = \"ldap\"\n")?;
    ensure!(e.contains("auth.mode"), "{e}");
    let e = check(
        "[server]\ntls_cert_file = \"/nonexistent.pem\"\ntls_key_file = \"/nonexistent.key\"\n",
    )?;
    ensure!(e.contains("server.tls_cert_file"), "{e}");
    let e = check("[server]\ntls_cert_file = \"/x.pem\"\n")?;
    ensure!(e.contains("server.tls_key_file"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_rs256_tokens_verify_with_a_pem_public_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // ES256: a P-256 key pair made now.
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let ec_pub = dir.path().join("ec.pub.pem");
    std::fs::write(&ec_pub, ec.public_key_pem())?;
    // RS256.
    let rsa_key = dir.path().join("rsa.pem");
    let rsa_pub = dir.path().join("rsa.pub.pem");
    herald_e2e::jwks::rsa_private_key(&rsa_key)?;
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&rsa_key)
        .arg("-out")
        .arg(&rsa_pub)
        .status()?;
    ensure!(ok.success(), "openssl pkey -pubout failed");
    let claims = json!({"sub": "ivy", "exp": now() + 60});
    for (public, alg, key) in [
        (
            &ec_pub,
            Algorithm::ES256,
            EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes())?,
        ),
        (
            &rsa_pub,
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&std::fs::read(&rsa_key)?)?,
        ),
    ] {
        let broker = Broker::start(&config(
            "",
            &format!(
                "[auth]\nmode = \"jwt\"\njwt_public_key_file = \"{}\"\n",
                public.display()
            ),
        ))?;
        let t = encode(&Header::new(alg), &claims, &key)?;
        let c = Client::connect_with(ws_request(&broker, "", Some(&t))?).await?;
        assert_eq!(c.welcome["type"], "welcome", "{alg:?}");
        // An HS256 token is refused by a public-key-only broker.
        let (status, body) =
            refused(ws_request(&broker, "", Some(&token(claims.clone())))?).await?;
        assert_eq!(status, 401, "{alg:?}: {body}");
    }
    Ok(())
}

/// A self-signed certificate for `localhost` written into `dir`: the `[server]` lines
/// that serve TLS with it, and a client connector that trusts it.
fn self_signed_tls(dir: &std::path::Path) -> Result<(String, tokio_rustls::TlsConnector)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem())?;
    std::fs::write(&key_file, cert.key_pair.serialize_pem())?;
    let server = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        cert_file.display(),
        key_file.display()
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone())?;
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok((
        server,
        tokio_rustls::TlsConnector::from(Arc::new(client_config)),
    ))
}

/// `GET path` over TLS to `addr`: the whole response, head and body.
async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    addr: &str,
    path: &str,
) -> Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await.ok();
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_wss_and_https_with_the_configured_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, connector) = self_signed_tls(dir.path())?;
    let broker = Broker::start(&config(&server, ""))?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    // wss://
    let tcp = tokio::net::TcpStream::connect(&broker.addr).await?;
    let tls = connector.connect(name.clone(), tcp).await?;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls).await?;
    use futures_util::StreamExt as _;
    let welcome = ws.next().await.context("a message")??;
    let welcome: Value = serde_json::from_str(welcome.to_text()?)?;
    assert_eq!(welcome["type"], "welcome");
    // https://
    let response = https_get(&connector, &broker.addr, "/healthz").await?;
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", broker.addr))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    ensure!(plain.is_err(), "plain HTTP was served: {plain:?}");
    let logs = broker.log_text();
    ensure!(
        logs.contains("listening on https://") && logs.contains("wss://"),
        "{logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_off_tickets_are_a_formality_so_clients_work_in_both_modes() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let (status, body) = api(&broker, reqwest::Method::POST, "/api/tickets", None, None).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["expires_in_ms"], 30000);
    let ticket = body["ticket"].as_str().context("ticket")?;
    let c = Client::connect_with(ws_request(&broker, &format!("?ticket={ticket}"), None)?).await?;
    assert_eq!(c.welcome["type"], "welcome");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_keeps_the_ticket_and_an_expired_token_voids_it() -> Result<()> {
    let broker = Broker::start(&config(
        "max_connections = 1",
        &format!("[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\n"),
    ))?;
    let first =
        Client::connect_with(ws_request(&broker, "", Some(&user("k", &[">"], &[])))?).await?;
    // At capacity: 503, and the ticket survives for the retry.
    let ticket = herald_e2e::ticket(&broker, &user("judy", &[">"], &[])).await?;
    let (status, _) = refused(ws_request(&broker, &format!("?ticket={ticket}"), None)?).await?;
    assert_eq!(status, 503);
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = Client::connect_with(ws_request(&broker, &format!("?ticket={ticket}"), None)?).await?;
    assert_eq!(c.welcome["type"], "welcome");
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A ticket outliving its token is refused on the upgrade (401), not after it.
    let short = token(json!({"sub": "judy", "exp": now() + 1}));
    let ticket = herald_e2e::ticket(&broker, &short).await?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = refused(ws_request(&broker, &format!("?ticket={ticket}"), None)?).await?;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("expired"), "{body}");
    assert!(
        broker
            .metric("herald_connections_refused_total{reason=\"unauthorized\"}")
            .await?
            >= 1.0
    );
    // The route exists: the wrong method is a 405, not a 404.
    let (status, _) = api(&broker, reqwest::Method::GET, "/api/tickets", None, None).await?;
    assert_eq!(status, 405);
    Ok(())
}

/// The names of the `topics` (or `patterns`) of a `GET /api/topics` answer.
fn names(body: &Value, list: &str, field: &str) -> Vec<String> {
    body[list]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r[field].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /api/topics` shows each caller exactly the topics and patterns its subscribe
/// grants cover, with the coverage rule of `subscribe`; an API key sees everything;
/// nobody sees anything without credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_topics_lists_only_what_the_caller_may_subscribe_to() -> Result<()> {
    let broker = Broker::start(&jwt_config(""))?;
    for topic in [
        "orders.customer-4711.invoice",
        "orders.customer-0815.invoice",
        "public.news",
        "public.sports.live",
    ] {
        let (status, body) = api(
            &broker,
            reqwest::Method::POST,
            "/api/publish",
            Some(API_KEY),
            Some(json!({"topic": topic, "data": {"n": 1}})),
        )
        .await?;
        ensure!(status == 202, "{topic}: {status} {body}");
    }
    // Two wildcard subscriptions held by a session that may subscribe to anything.
    let admin = user("ops", &[">"], &[]);
    let mut watcher = Client::connect_with(ws_request(&broker, "", Some(&admin))?).await?;
    watcher.subscribe(&["public.*", "orders.>"]).await?;
    let list = |cred: Option<String>| {
        let broker = &broker;
        async move {
            let (status, body) = api(
                broker,
                reqwest::Method::GET,
                "/api/topics",
                cred.as_deref(),
                None,
            )
            .await?;
            ensure!(status == 200, "{status} {body}");
            Ok::<_, anyhow::Error>((
                names(&body, "topics", "topic"),
                names(&body, "patterns", "pattern"),
            ))
        }
    };
    let everything = (
        vec![
            "orders.customer-0815.invoice".to_owned(),
            "orders.customer-4711.invoice".to_owned(),
            "public.news".to_owned(),
            "public.sports.live".to_owned(),
        ],
        vec!["orders.>".to_owned(), "public.*".to_owned()],
    );
    ensure!(
        list(Some(API_KEY.into())).await? == everything,
        "an API key sees all"
    );
    ensure!(
        list(Some(admin.clone())).await? == everything,
        "`>` sees all"
    );
    // `public.*` covers one token: not public.sports.live, and not the pattern
    // orders.>.
    let (topics, patterns) = list(Some(user("browser", &["public.*"], &[]))).await?;
    ensure!(topics == ["public.news"], "{topics:?}");
    ensure!(patterns == ["public.*"], "{patterns:?}");
    let (topics, patterns) = list(Some(user("customer", &["orders.customer-4711.>"], &[]))).await?;
    ensure!(topics == ["orders.customer-4711.invoice"], "{topics:?}");
    ensure!(
        patterns.is_empty(),
        "orders.> is wider than the grant: {patterns:?}"
    );
    let (topics, patterns) = list(Some(user("nobody", &[], &[]))).await?;
    ensure!(
        topics.is_empty() && patterns.is_empty(),
        "{topics:?} {patterns:?}"
    );
    let (status, _) = api(&broker, reqwest::Method::GET, "/api/topics", None, None).await?;
    ensure!(status == 401, "no credentials: {status}");
    Ok(())
}

/// One row of the route table in docs/security.md.
struct DocRoute {
    method: reqwest::Method,
    path: String,
    /// The documented status without credentials, with an invalid JWT, and with an
    /// API key: the first number of each cell.
    statuses: [u16; 3],
}

/// The route table of docs/security.md ("Routes and their credentials").
fn doc_routes() -> Result<Vec<DocRoute>> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md"),
    )?;
    let first_number = |cell: &str| -> Result<u16> {
        let digits: String = cell
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .with_context(|| format!("no status in `{cell}`"))
    };
    let mut routes = Vec::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(route) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        let Some((method, path)) = route.split_once(' ') else {
            continue;
        };
        if !matches!(method, "GET" | "POST") || cells.len() < 7 {
            continue;
        }
        routes.push(DocRoute {
            method: method.parse()?,
            path: path.to_owned(),
            statuses: [
                first_number(cells[3])?,
                first_number(cells[4])?,
                first_number(cells[5])?,
            ],
        });
    }
    ensure!(
        routes.len() >= 10,
        "the route table has {} rows",
        routes.len()
    );
    Ok(routes)
}

/// Walks the route table of docs/security.md against a node with `auth.mode =
/// "jwt"`: every route answers a caller without credentials, with an invalid JWT and
/// with an API key exactly as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_credential_as_docs_security_says() -> Result<()> {
    let broker = Broker::start(&jwt_config(""))?;
    let invalid = token(json!({"sub": "x", "exp": now() + 60})).replace('.', "x.");
    for route in doc_routes()? {
        let creds = [None, Some(invalid.as_str()), Some(API_KEY)];
        for (cred, want) in creds.into_iter().zip(route.statuses) {
            let got = if route.path == "/ws" {
                herald_e2e::upgrade_status(ws_request(&broker, "", cred)?).await?
            } else {
                let body = (route.method == reqwest::Method::POST && route.path == "/api/publish")
                    .then(|| json!({"topic": "docs.walk", "data": 1}));
                // A stream needs its topics, or it is a 400 whoever asks.
                let path = if route.path == "/sse" {
                    "/sse?topics=docs.walk".to_owned()
                } else {
                    route.path.clone()
                };
                api(&broker, route.method.clone(), &path, cred, body)
                    .await?
                    .0
            };
            let which = match cred {
                None => "no credential",
                Some(c) if c == API_KEY => "an API key",
                Some(_) => "an invalid JWT",
            };
            ensure!(
                got == want,
                "{} {} with {which}: {got}, docs/security.md says {want}",
                route.method,
                route.path
            );
        }
    }
    Ok(())
}

/// The status of `GET path` at `base`.
async fn status_of(base: &str, path: &str) -> Result<u16> {
    Ok(reqwest::get(format!("{base}{path}"))
        .await?
        .status()
        .as_u16())
}

/// With `server.admin_listen`, `/metrics`, `/healthz`, `/readyz` and `/api/topics`
/// answer there only; `server.dashboard = false` turns `/` and `/herald.js` off; the
/// WebSocket and the publish API stay on the public port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_takes_the_operational_routes_off_the_public_port() -> Result<()> {
    let broker = Broker::start(&jwt_config("").replace(
        "[server]\n",
        "[server]\nadmin_listen = \"127.0.0.1:0\"\ndashboard = false\n",
    ))?;
    let admin = format!("http://{}", broker.admin.clone().context("admin address")?);
    let public = broker.http();
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/topics",
        "/",
        "/herald.js",
    ] {
        ensure!(status_of(&public, path).await? == 404, "public {path}");
    }
    ensure!(status_of(&public, "/asyncapi.json").await? == 200);
    for path in ["/metrics", "/healthz", "/readyz"] {
        ensure!(status_of(&admin, path).await? == 200, "admin {path}");
    }
    for path in ["/ws", "/", "/herald.js", "/asyncapi.json"] {
        ensure!(status_of(&admin, path).await? == 404, "admin {path}");
    }
    // /api/topics keeps its credentials on the admin address.
    ensure!(status_of(&admin, "/api/topics").await? == 401);
    let res = reqwest::Client::new()
        .get(format!("{admin}/api/topics"))
        .bearer_auth(API_KEY)
        .send()
        .await?;
    ensure!(res.status() == 200, "{}", res.status());
    // A wrong method on the admin address is still a 405 with `Allow`.
    let res = reqwest::Client::new()
        .post(format!("{admin}/metrics"))
        .send()
        .await?;
    ensure!(res.status() == 405 && herald_e2e::header(&res, "allow") == "GET");
    // The public side works as before.
    let (status, body) = api(
        &broker,
        reqwest::Method::POST,
        "/api/publish",
        Some(API_KEY),
        Some(json!({"topic": "a.b", "data": 1})),
    )
    .await?;
    ensure!(status == 202, "{status} {body}");
    // The WebSocket stays on the public port (`connect_with` waits for `welcome`).
    Client::connect_with(ws_request(&broker, "", Some(&user("u", &[">"], &[])))?).await?;
    let logs = broker.log_text();
    ensure!(
        logs.contains(&format!("/api/topics on {admin}/")),
        "the startup line names the admin address: {logs}"
    );
    Ok(())
}

/// The admin listener speaks plain HTTP while `server.listen` serves TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_is_plain_http_beside_tls_on_the_public_port() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (tls, connector) = self_signed_tls(dir.path())?;
    let broker = Broker::start(&config(
        &format!("{tls}\nadmin_listen = \"127.0.0.1:0\""),
        "",
    ))?;
    let admin = format!("http://{}", broker.admin.clone().context("admin address")?);
    ensure!(status_of(&admin, "/healthz").await? == 200);
    ensure!(status_of(&admin, "/metrics").await? == 200);
    let response = https_get(&connector, &broker.addr, "/metrics").await?;
    ensure!(response.starts_with("HTTP/1.1 404"), "{response}");
    let response = https_get(&connector, &broker.addr, "/").await?;
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    Ok(())
}

/// `POST /api/tickets` from the local address `from` (any of 127.0.0.0/8).
async fn ticket_from(broker: &Broker, token: &str, from: [u8; 4]) -> Result<(u16, String, Value)> {
    let res = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .build()?
        .post(format!("{}/api/tickets", broker.http()))
        .bearer_auth(token)
        .send()
        .await?;
    let status = res.status().as_u16();
    let retry_after = herald_e2e::header(&res, "retry-after");
    Ok((status, retry_after, res.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_rate_limited_per_token_subject_and_per_address() -> Result<()> {
    let broker = Broker::start(&jwt_config("ticket_rate_per_s = 1\nticket_rate_burst = 2"))?;
    let (alice, bob) = (user("alice", &[">"], &[]), user("bob", &[">"], &[]));
    for _ in 0..2 {
        assert_eq!(ticket_from(&broker, &alice, [127, 0, 0, 1]).await?.0, 201);
    }
    // Alice has had her burst, from any address.
    let (status, retry, body) = ticket_from(&broker, &alice, [127, 0, 0, 2]).await?;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("token subject") && message.contains("auth.ticket_rate_per_s"),
        "{message}"
    );
    assert!(
        retry.parse::<u64>().is_ok_and(|s| (1..=2).contains(&s)),
        "Retry-After {retry:?}"
    );
    // 127.0.0.1 has had its burst too, whoever asks.
    let (status, _, body) = ticket_from(&broker, &bob, [127, 0, 0, 1]).await?;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("address"),
        "{body}"
    );
    // Bob from elsewhere is not held back by either.
    assert_eq!(ticket_from(&broker, &bob, [127, 0, 0, 3]).await?.0, 201);
    // A refused request cost nothing: a second later Alice gets one again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ticket_from(&broker, &alice, [127, 0, 0, 4]).await?.0, 201);
    Ok(())
}
