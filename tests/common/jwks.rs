//! An identity provider's key endpoint for the tests: signing keys made at test time
//! (RSA by openssl, since ring cannot generate RSA keys; P-256 and Ed25519 by rcgen)
//! and a JWKS server over real HTTP or HTTPS whose document, `Cache-Control` and
//! health the test changes while Herald runs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context as _, Result};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A key pair the test signs tokens with; its public half goes into the JWKS.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    /// An Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> Result<SigningKey> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        Ok(SigningKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": kid,
                        "x": b64url(pair.public_key_raw())}),
        })
    }

    /// A P-256 key (ES256); its JWK names no `alg`, as many providers publish it.
    pub fn p256(kid: &str) -> Result<SigningKey> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        // The uncompressed point: 0x04, then x and y.
        let point = pair.public_key_raw();
        ensure!(
            point.len() == 65 && point[0] == 4,
            "not an uncompressed P-256 point"
        );
        Ok(SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                        "x": b64url(&point[1..33]), "y": b64url(&point[33..])}),
        })
    }

    /// A 2048-bit RSA key (RS256), made by openssl.
    pub fn rsa(kid: &str) -> Result<SigningKey> {
        let dir = tempfile::tempdir()?;
        let pem_file = dir.path().join("rsa.pem");
        rsa_private_key(&pem_file)?;
        let modulus = std::process::Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&pem_file)
            .output()?;
        ensure!(modulus.status.success(), "openssl rsa -modulus failed");
        let hex = String::from_utf8(modulus.stdout)?;
        let hex = hex
            .trim()
            .strip_prefix("Modulus=")
            .context("openssl -modulus output")?;
        let n = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()?;
        Ok(SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(&std::fs::read(&pem_file)?)?,
            // genpkey's public exponent is 65537.
            jwk: json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
                        "n": b64url(&n), "e": "AQAB"}),
        })
    }

    /// A token of `claims`, with this key's `kid` in its header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("a token encodes")
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }
}

/// Writes a new 2048-bit RSA private key (PKCS#8 PEM) to `path`. openssl makes it:
/// ring cannot generate RSA keys.
pub fn rsa_private_key(path: &std::path::Path) -> Result<()> {
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()
        .context("openssl (Debian's openssl package) makes the RSA test key")?;
    ensure!(ok.success(), "openssl genpkey failed");
    Ok(())
}

/// What the server answers.
struct Answer {
    /// `{"keys": [...]}`.
    document: String,
    cache_control: Option<String>,
    /// Set: answer this status with no keys, as a provider that is down.
    failing: Option<u16>,
    /// Complete `GET` requests seen.
    requests: usize,
}

/// A JWKS endpoint at `/jwks`, over HTTP or HTTPS, on a port of its own.
pub struct JwksServer {
    addr: SocketAddr,
    https: bool,
    answer: Arc<Mutex<Answer>>,
    task: tokio::task::JoinHandle<()>,
    /// With HTTPS: the PEM of the self-signed certificate it serves (Herald's
    /// `auth.jwks_ca_file`), kept here while the server runs.
    ca_file: Option<tempfile::NamedTempFile>,
}

impl JwksServer {
    /// Serves `keys` over plain HTTP.
    pub async fn start(keys: &[&SigningKey]) -> Result<JwksServer> {
        JwksServer::serve(keys, None).await
    }

    /// Serves `keys` over HTTPS with a certificate for `127.0.0.1` made now; trust it
    /// through [`JwksServer::ca_file`].
    pub async fn start_https(keys: &[&SigningKey]) -> Result<JwksServer> {
        let cert =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into()),
        )?;
        let mut ca_file = tempfile::NamedTempFile::new()?;
        std::io::Write::write_all(&mut ca_file, cert.cert.pem().as_bytes())?;
        let mut server = JwksServer::serve(
            keys,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await?;
        server.ca_file = Some(ca_file);
        Ok(server)
    }

    async fn serve(
        keys: &[&SigningKey],
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<JwksServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let answer = Arc::new(Mutex::new(Answer {
            document: document(keys),
            cache_control: None,
            failing: None,
            requests: 0,
        }));
        let https = tls.is_some();
        let shared = answer.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let answer = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                respond(stream, &answer).await;
                            }
                        }
                        None => respond(tcp, &answer).await,
                    }
                });
            }
        });
        Ok(JwksServer {
            addr,
            https,
            answer,
            task,
            ca_file: None,
        })
    }

    /// The JWKS URL (`auth.jwks_url`).
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/jwks", self.addr)
    }

    /// The certificate to trust (`auth.jwks_ca_file`), with HTTPS.
    pub fn ca_file(&self) -> Option<String> {
        self.ca_file
            .as_ref()
            .map(|f| f.path().display().to_string())
    }

    fn answer(&self) -> std::sync::MutexGuard<'_, Answer> {
        self.answer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves these keys from now on (a rotation).
    pub fn publish(&self, keys: &[&SigningKey]) {
        self.answer().document = document(keys);
    }

    /// The `Cache-Control` header of the answers (none by default).
    pub fn cache_control(&self, value: Option<&str>) {
        self.answer().cache_control = value.map(str::to_owned);
    }

    /// Answers `status` instead of the keys (`None`: serve them again).
    pub fn fail_with(&self, status: Option<u16>) {
        self.answer().failing = status;
    }

    /// `GET` requests answered so far.
    pub fn requests(&self) -> usize {
        self.answer().requests
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn document(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk().clone()).collect::<Vec<_>>()}).to_string()
}

/// Reads one request head and answers it, then closes.
async fn respond<S>(mut stream: S, answer: &Mutex<Answer>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let response = {
        let mut a = answer.lock().unwrap_or_else(|p| p.into_inner());
        a.requests += 1;
        let (status, body) = match a.failing {
            Some(status) => (status, r#"{"error":"down"}"#.to_owned()),
            None => (200, a.document.clone()),
        };
        let cache = a
            .cache_control
            .as_deref()
            .map_or(String::new(), |v| format!("Cache-Control: {v}\r\n"));
        format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{cache}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
