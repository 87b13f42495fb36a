//! End-to-end tests of how the NATS bridge secures its connection, each against a
//! private nats-server configured for it, with every key, certificate and JWT made at
//! test time:
//!
//! - TLS: a CA and a server certificate (`rcgen`); the bridge trusts the server only
//!   through `tls_ca_file`; mutual TLS with `tls_cert_file`/`tls_key_file`;
//!   `tls_required` refuses a plaintext server.
//! - NKey: a user nkey in the server's `authorization`, its seed in the bridge's
//!   `nkey` (never logged).
//! - `.creds`: an operator-mode server (memory resolver) with operator, account and
//!   user JWTs signed here, and the user's JWT and seed in a `.creds` file.
//!
//! Each test also shows the server refuses a bridge without the right secret, so a
//! ready bridge proves the secret was used. User/password and token are tested in
//! `nats.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald_e2e::nats::NatsServer;
use herald_e2e::{config, Broker};
use serde_json::{json, Value};

/// A bridge `events` on `url`, subscribed to `events.>` with `strip_prefix =
/// "events."`, with `extra` TOML lines.
fn bridge(url: &str, extra: &str) -> String {
    config(
        "",
        &format!(
            "[[bridge.nats]]\nname = \"events\"\nurl = \"{url}\"\nsubjects = [\"events.>\"]\nstrip_prefix = \"events.\"\n{extra}\n"
        ),
    )
}

/// Publishes `data` on `events.<topic>` through `publisher` and checks a WebSocket
/// subscriber of `broker` receives it as topic `<topic>`.
async fn delivers(broker: &Broker, publisher: &async_nats::Client, topic: &str) -> Result<()> {
    let mut c = broker.client().await?;
    c.subscribe(&[topic]).await?;
    publisher
        .publish(
            format!("events.{topic}"),
            json!({"via": topic}).to_string().into(),
        )
        .await?;
    publisher.flush().await?;
    let e = c.event().await?;
    assert_eq!(
        (e["topic"].as_str(), &e["data"], e["source"].as_str()),
        (Some(topic), &json!({"via": topic}), Some("nats")),
        "{e}"
    );
    Ok(())
}

/// `herald check-config` output for `toml`: the effective config, secrets masked.
fn check_config(toml: &str) -> Result<String> {
    let out = herald_e2e::check_config(toml)?;
    anyhow::ensure!(out.code == Some(0), "check-config failed: {out:?}");
    Ok(out.stdout + &out.stderr)
}

/// A quoted path for a config file (TOML and nats-server's format agree on this).
fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

// ---------------------------------------------------------------------------------
// TLS

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, as
/// PEM files in a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn new() -> Result<Pki> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir()?;
        let write = |name: &str, pem: String| -> Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, pem)?;
            Ok(path)
        };

        let ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Herald test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key)?;

        let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key)?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            "127.0.0.1",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) =
            leaf("herald", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok(Pki {
            ca: write("ca.pem", ca.pem())?,
            server_cert: write("server.pem", server_cert)?,
            server_key: write("server-key.pem", server_key)?,
            client_cert: write("client.pem", client_cert)?,
            client_key: write("client-key.pem", client_key)?,
            _dir: dir,
        })
    }

    /// nats-server's `tls { … }` block; `verify` asks clients for a certificate
    /// signed by the CA (mutual TLS).
    fn server_conf(&self, verify: bool) -> String {
        let mut conf = format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n",
            quoted(&self.server_cert),
            quoted(&self.server_key)
        );
        if verify {
            conf += &format!("  ca_file: {}\n  verify: true\n", quoted(&self.ca));
        }
        conf + "  timeout: 2\n}\n"
    }
}

/// `tls://127.0.0.1:PORT`.
fn tls_url(nats: &NatsServer) -> String {
    format!("tls://127.0.0.1:{}", nats.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_bridge_trusts_the_server_through_tls_ca_file() -> Result<()> {
    let pki = Pki::new()?;
    let nats = NatsServer::start_with_config(&pki.server_conf(false))?;
    let ca = format!("tls_ca_file = {}", quoted(&pki.ca));

    let broker = Broker::start(&bridge(&tls_url(&nats), &ca))?;
    broker.wait_readyz(200).await?;
    let publisher = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca.clone())
        .connect(tls_url(&nats))
        .await
        .context("test publisher over TLS")?;
    delivers(&broker, &publisher, "secure").await?;

    // Without the CA, the server's certificate is not trusted: not ready, and
    // /readyz says why.
    let untrusting = Broker::start(&bridge(&tls_url(&nats), ""))?;
    let reason = untrusting.wait_reason("invalid peer certificate").await?;
    assert!(
        reason.starts_with("bridge events: down: cannot connect to NATS"),
        "{reason}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(untrusting.get("/readyz").await?.0, 503);

    // A nats:// URL with tls_required = true upgrades to TLS too.
    let required = Broker::start(&bridge(&nats.url(), &format!("{ca}\ntls_required = true")))?;
    required.wait_readyz(200).await?;
    delivers(&required, &publisher, "required").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_a_plaintext_server() -> Result<()> {
    let nats = NatsServer::start()?;
    let broker = Broker::start(&bridge(&nats.url(), "tls_required = true"))?;
    // The plaintext answer to the TLS handshake: "received corrupt message".
    let reason = broker.wait_reason("cannot connect to NATS").await?;
    assert!(reason.contains("corrupt message"), "{reason}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broker.get("/readyz").await?.0, 503);
    // The same bridge without tls_required connects: the server is fine.
    let plain = Broker::start(&bridge(&nats.url(), ""))?;
    plain.wait_readyz(200).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_authenticates_the_bridge_with_its_certificate() -> Result<()> {
    let pki = Pki::new()?;
    let nats = NatsServer::start_with_config(&pki.server_conf(true))?;
    let ca = format!("tls_ca_file = {}", quoted(&pki.ca));
    let cert = format!(
        "tls_cert_file = {}\ntls_key_file = {}",
        quoted(&pki.client_cert),
        quoted(&pki.client_key)
    );

    let broker = Broker::start(&bridge(&tls_url(&nats), &format!("{ca}\n{cert}")))?;
    broker.wait_readyz(200).await?;
    let publisher = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca.clone())
        .add_client_certificate(pki.client_cert.clone(), pki.client_key.clone())
        .connect(tls_url(&nats))
        .await
        .context("test publisher over mutual TLS")?;
    delivers(&broker, &publisher, "mutual").await?;

    // Trusting the server is not enough: without a client certificate the server
    // refuses the bridge.
    let anonymous = Broker::start(&bridge(&tls_url(&nats), &ca))?;
    // The server's TLS alert, as rustls reports it: "received fatal alert:
    // BadCertificate".
    let reason = anonymous.wait_reason("cannot connect to NATS").await?;
    assert!(reason.contains("fatal alert"), "{reason}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(anonymous.get("/readyz").await?.0, 503);
    Ok(())
}

// ---------------------------------------------------------------------------------
// NKey

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_authenticates_the_bridge_and_is_never_logged() -> Result<()> {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed()?;
    let nats = NatsServer::start_with_config(&format!(
        "authorization {{\n  users = [\n    {{ nkey: \"{}\" }}\n  ]\n}}\n",
        user.public_key()
    ))?;

    let config = bridge(&nats.url(), &format!("nkey = \"{seed}\""));
    let broker = Broker::start(&config)?;
    broker.wait_readyz(200).await?;
    let publisher = async_nats::ConnectOptions::with_nkey(seed.clone())
        .connect(nats.url())
        .await?;
    delivers(&broker, &publisher, "signed").await?;

    // A seed the server does not know is refused, and /readyz says so.
    let stranger = nkeys::KeyPair::new_user().seed()?;
    let refused = Broker::start(&bridge(&nats.url(), &format!("nkey = \"{stranger}\"")))?;
    refused.wait_reason("authorization violation").await?;

    // No seed in any log, nor in check-config's output.
    for (b, s) in [(&broker, &seed), (&refused, &stranger)] {
        assert!(!b.log_text().contains(s.as_str()), "seed logged");
        // Not even the part after the prefix every user seed shares.
        assert!(!b.log_text().contains(&s[2..]), "seed logged");
    }
    let effective = check_config(&config)?;
    assert!(effective.contains("nkey = \"***\""), "{effective}");
    assert!(
        !effective.contains(&seed[2..]),
        "check-config shows the seed"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// .creds: operator mode

/// A NATS JWT (v2): `header.claims.signature`, each base64url without padding, the
/// signature ed25519 by `signer` over `header.claims`. `nats` is the type-specific
/// part. `jti` only has to be unique here: nats-server does not recompute it.
fn jwt(signer: &nkeys::KeyPair, subject: &str, name: &str, nats: Value) -> Result<String> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let header = URL_SAFE_NO_PAD.encode(json!({"typ": "JWT", "alg": "ed25519-nkey"}).to_string());
    let claims = json!({
        "jti": format!(
            "HERALDTEST{}X{}",
            now.as_nanos(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ),
        "iat": now.as_secs(),
        "iss": signer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let signature = signer.sign(signed.as_bytes())?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// An operator, one account it signed, and a nats-server config trusting them with a
/// memory resolver. The account has no limits, `-1` everywhere: a limit missing from
/// an account JWT is 0, and nats-server 2.9 then refuses every connection ("maximum
/// account active connections exceeded").
struct Operator {
    account: nkeys::KeyPair,
    conf: String,
}

impl Operator {
    fn new() -> Result<Operator> {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let operator_jwt = jwt(
            &operator,
            &operator.public_key(),
            "herald-test",
            json!({"type": "operator", "version": 2}),
        )?;
        let account_jwt = jwt(
            &operator,
            &account.public_key(),
            "HERALD",
            json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1,
                    "imports": -1, "exports": -1, "wildcards": true,
                    "conn": -1, "leaf": -1
                },
                "default_permissions": {"pub": {}, "sub": {}},
                "type": "account",
                "version": 2
            }),
        )?;
        let conf = format!(
            "operator: {operator_jwt}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {account_jwt}\n}}\n",
            account.public_key()
        );
        Ok(Operator { account, conf })
    }
}

/// A `.creds` file `<dir>/<name>.creds` for a new user of `account` (its JWT signed
/// by the account, no limits), in the standard format.
fn write_creds(account: &nkeys::KeyPair, dir: &Path, name: &str) -> Result<PathBuf> {
    let user = nkeys::KeyPair::new_user();
    let user_jwt = jwt(
        account,
        &user.public_key(),
        name,
        json!({
            "pub": {}, "sub": {},
            "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2
        }),
    )?;
    let path = dir.join(format!("{name}.creds"));
    std::fs::write(
        &path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            user.seed()?
        ),
    )?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_authenticates_the_bridge_on_an_operator_mode_server() -> Result<()> {
    let operator = Operator::new()?;
    let nats = NatsServer::start_with_config(&operator.conf)?;
    let dir = tempfile::tempdir()?;
    let creds = write_creds(&operator.account, dir.path(), "bridge")?;

    let broker = Broker::start(&bridge(
        &nats.url(),
        &format!("creds_file = {}", quoted(&creds)),
    ))?;
    broker.wait_readyz(200).await?;
    let publisher_creds = write_creds(&operator.account, dir.path(), "publisher")?;
    let publisher = async_nats::ConnectOptions::with_credentials_file(&publisher_creds)
        .await?
        .connect(nats.url())
        .await
        .context("test publisher with its own creds")?;
    delivers(&broker, &publisher, "jwt").await?;

    // The server does require a JWT: a bridge without one is refused, and so is a
    // user signed by an account the operator never signed.
    let anonymous = Broker::start(&bridge(&nats.url(), ""))?;
    anonymous.wait_reason("authorization violation").await?;
    let rogue = write_creds(&nkeys::KeyPair::new_account(), dir.path(), "rogue")?;
    let rogue = Broker::start(&bridge(
        &nats.url(),
        &format!("creds_file = {}", quoted(&rogue)),
    ))?;
    rogue.wait_reason("authorization violation").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_creds_file_is_not_ready_and_named() -> Result<()> {
    let operator = Operator::new()?;
    let nats = NatsServer::start_with_config(&operator.conf)?;
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nowhere").join("bridge.creds");
    let broker = Broker::start(&bridge(
        &nats.url(),
        &format!("creds_file = {}", quoted(&missing)),
    ))?;
    let reason = broker.wait_reason(&missing.display().to_string()).await?;
    assert!(reason.contains("cannot read creds file"), "{reason}");
    // Herald itself serves on.
    assert_eq!(broker.get("/healthz").await?.0, 200);
    Ok(())
}
