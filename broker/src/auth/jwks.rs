//! `auth.jwks_url`: the identity provider's signing keys, fetched and kept fresh
//! (docs/security.md#keys-from-the-identity-provider-jwks).
//!
//! - Fetched at start, then again once the response's `Cache-Control: max-age` has
//!   passed, clamped to `auth.jwks_min_refresh_ms ..= auth.jwks_max_refresh_ms`
//!   (`no-cache`, `no-store` or `max-age=0`: the minimum; nothing said: the maximum).
//! - A token signed with a key id (`kid`) that is not in the set makes the node fetch
//!   at once, at most once per `auth.jwks_min_refresh_ms`; tokens that arrive during a
//!   fetch wait for that one fetch instead of starting their own. So a provider can
//!   sign with a new key the moment it publishes it.
//! - A failed fetch keeps the last good keys and is retried with backoff. Only keys
//!   older than `auth.jwks_stale_ms` show as a problem (`/readyz` 503,
//!   `herald_jwks_stale` 1); they keep verifying tokens meanwhile.
//! - Each key verifies exactly one algorithm: its `alg`, or the one its type implies
//!   (RSA: RS256; EC P-256: ES256; P-384: ES384; OKP Ed25519: EdDSA), so a token
//!   cannot pick a weaker reading of a key. Keys for encryption, symmetric keys
//!   (`oct`: a JWKS is public) and keys Herald cannot use are skipped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tracing::{debug, info, warn};

use crate::auth::AuthError;
use crate::config::AuthConfig;

/// The largest JWKS document Herald reads (providers publish a few keys: a few KB).
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The most keys Herald keeps from one document.
const MAX_KEYS: usize = 64;
/// One fetch, connection included, gives up after this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry after a failed fetch; it doubles up to `auth.jwks_max_refresh_ms`.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Why `auth.jwks_*` cannot be used (reported as a config error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksConfigError {
    #[error("cannot read {path}: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    Ca { path: String },
    #[error("cannot build the HTTP client for auth.jwks_url: {0}")]
    Client(#[source] reqwest::Error),
}

impl JwksConfigError {
    /// The configuration key at fault.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            JwksConfigError::Client(_) => "auth.jwks_url",
            _ => "auth.jwks_ca_file",
        }
    }
}

/// Why one fetch of the JWKS failed (logged; the last good keys stay).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// With its causes: reqwest's own message only says the request failed.
    #[error("{}", with_causes(.0))]
    Http(#[source] reqwest::Error),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS document: {0}")]
    Document(#[from] serde_json::Error),
    #[error("no key Herald can verify with ({0})")]
    NoUsableKey(String),
}

impl From<reqwest::Error> for FetchError {
    /// Without the URL, which reqwest puts in its message: its query may hold a
    /// key, and the message reaches the log and `/readyz`.
    fn from(e: reqwest::Error) -> Self {
        FetchError::Http(e.without_url())
    }
}

/// An error and every cause under it, `: `-separated.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `auth.jwks_url` as Herald fetches it: `http` or `https`, with a host, and no
/// credentials (the URL is logged).
pub(crate) fn parse_url(url: &str) -> Result<reqwest::Url, &'static str> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "an http:// or https:// URL")?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("an http:// or https:// URL with a host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("a URL without credentials (it is logged)");
    }
    Ok(parsed)
}

/// One verification key of the set.
struct SigningKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys of one fetched document.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<SigningKey>,
}

impl KeySet {
    /// Reads a JWKS document; keys Herald cannot use are skipped, and listed in the
    /// error when none is left.
    fn parse(body: &[u8]) -> Result<(KeySet, Vec<String>), FetchError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(body)?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for raw in document.keys {
            if keys.len() == MAX_KEYS {
                skipped.push(format!("keys past the first {MAX_KEYS}"));
                break;
            }
            match signing_key(raw) {
                Ok(key) => keys.push(key),
                Err(why) => skipped.push(why),
            }
        }
        if keys.is_empty() {
            let why = if skipped.is_empty() {
                "the set is empty".to_owned()
            } else {
                skipped.join("; ")
            };
            return Err(FetchError::NoUsableKey(why));
        }
        Ok((KeySet { keys }, skipped))
    }

    /// The key that verifies a token with header `kid` and `alg`.
    ///
    /// A token names its key by `kid`; one without `kid` is accepted only when the
    /// set has exactly one key for its algorithm.
    pub(crate) fn find(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<&DecodingKey, AuthError> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Err(AuthError::UnknownKey);
                }
                named.find(|k| k.alg == alg).map(|k| &k.key).ok_or_else(|| {
                    AuthError::Invalid(format!("algorithm {alg:?} does not match the token's key"))
                })
            }
            None => {
                let mut of_alg = self.keys.iter().filter(|k| k.alg == alg);
                match (of_alg.next(), of_alg.next()) {
                    (None, _) => Err(AuthError::UnknownKey),
                    (Some(k), None) => Ok(&k.key),
                    (Some(_), Some(_)) => Err(AuthError::Invalid(format!(
                        "the token names no key (kid) and the JWKS holds several for {alg:?}"
                    ))),
                }
            }
        }
    }

    fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect()
    }
}

/// One key of the document as a [`SigningKey`], or why Herald skips it.
fn signing_key(raw: serde_json::Value) -> Result<SigningKey, String> {
    let kid = raw.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
    let name = kid.as_deref().unwrap_or("(no kid)").to_owned();
    let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("{name}: {e}"))?;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err(format!("{name}: for encryption"));
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err(format!("{name}: not for verifying"));
        }
    }
    let stated = jwk.common.key_algorithm;
    let alg = match (&jwk.algorithm, stated) {
        (AlgorithmParameters::RSA(_), None) => Some(Algorithm::RS256),
        (AlgorithmParameters::RSA(_), Some(a)) => match a {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::RS384 => Some(Algorithm::RS384),
            KeyAlgorithm::RS512 => Some(Algorithm::RS512),
            KeyAlgorithm::PS256 => Some(Algorithm::PS256),
            KeyAlgorithm::PS384 => Some(Algorithm::PS384),
            KeyAlgorithm::PS512 => Some(Algorithm::PS512),
            _ => None,
        },
        (AlgorithmParameters::EllipticCurve(p), a) => match (&p.curve, a) {
            (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => Some(Algorithm::ES256),
            (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => Some(Algorithm::ES384),
            _ => None,
        },
        (AlgorithmParameters::OctetKeyPair(p), None | Some(KeyAlgorithm::EdDSA))
            if p.curve == EllipticCurve::Ed25519 =>
        {
            Some(Algorithm::EdDSA)
        }
        (AlgorithmParameters::OctetKey(_), _) => {
            return Err(format!("{name}: a symmetric key has no place in a JWKS"))
        }
        _ => None,
    };
    let alg = alg.ok_or_else(|| format!("{name}: key type and algorithm not supported"))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("{name}: {e}"))?;
    Ok(SigningKey { kid, alg, key })
}

/// When to fetch again, from the response's `Cache-Control`.
fn refresh_after(headers: &reqwest::header::HeaderMap, min: Duration, max: Duration) -> Duration {
    let directives = headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase());
    let mut said = None;
    for d in directives {
        if d == "no-cache" || d == "no-store" {
            return min;
        }
        if let Some(secs) = d.strip_prefix("max-age=") {
            said = secs
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    said.map_or(max, |age| age.clamp(min, max))
}

/// What the last fetches left.
#[derive(Default)]
struct Status {
    /// The last successful fetch.
    fetched: Option<Instant>,
    /// The last fetch, successful or not.
    attempted: Option<Instant>,
    /// Why the last fetch failed, until one succeeds.
    error: Option<String>,
}

/// What `/metrics` shows of the JWKS.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub keys: usize,
    pub age_s: u64,
    pub stale: bool,
    pub fetched_ok: u64,
    pub fetch_failed: u64,
}

/// The keys of `auth.jwks_url`, and the fetching that keeps them fresh.
pub(crate) struct Jwks {
    url: reqwest::Url,
    client: reqwest::Client,
    min_refresh: Duration,
    max_refresh: Duration,
    stale_after: Duration,
    created: Instant,
    keys: RwLock<Arc<KeySet>>,
    status: Mutex<Status>,
    /// Held during a fetch: one at a time, and tokens that need fresh keys wait on it.
    fetching: tokio::sync::Mutex<()>,
    /// Fetches finished (either way): a token that waited for the lock while one
    /// ran takes its result rather than fetching again.
    finished: AtomicU64,
    fetched_ok: AtomicU64,
    fetch_failed: AtomicU64,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.shown())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// The JWKS of `[auth]`, when `auth.jwks_url` is set (validated). Nothing is
    /// fetched until [`Jwks::run`].
    pub(crate) fn new(c: &AuthConfig) -> Result<Option<Arc<Jwks>>, JwksConfigError> {
        if c.jwks_url.is_empty() {
            return Ok(None);
        }
        let Ok(url) = parse_url(&c.jwks_url) else {
            unreachable!("auth.jwks_url is validated before the authenticator is built");
        };
        let mut client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT / 2)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            // Never from https to http: the keys decide who gets in.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let downgrade = attempt.url().scheme() == "http"
                    && attempt.previous().iter().any(|u| u.scheme() == "https");
                if downgrade {
                    attempt.error("redirect from https to http refused")
                } else if attempt.previous().len() > 3 {
                    attempt.error("more than 3 redirects")
                } else {
                    attempt.follow()
                }
            }));
        if !c.jwks_ca_file.is_empty() {
            let path = &c.jwks_ca_file;
            let pem = std::fs::read(path).map_err(|source| JwksConfigError::ReadCa {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| JwksConfigError::Ca { path: path.clone() })?;
            for cert in certs {
                client = client.add_root_certificate(cert);
            }
        }
        let client = client.build().map_err(JwksConfigError::Client)?;
        Ok(Some(Arc::new(Jwks {
            url,
            client,
            min_refresh: Duration::from_millis(c.jwks_min_refresh_ms),
            max_refresh: Duration::from_millis(c.jwks_max_refresh_ms),
            stale_after: Duration::from_millis(c.jwks_stale_ms),
            created: Instant::now(),
            keys: RwLock::default(),
            status: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
            finished: AtomicU64::new(0),
            fetched_ok: AtomicU64::new(0),
            fetch_failed: AtomicU64::new(0),
        })))
    }

    /// The URL as logged: scheme, host, port and path (a query may carry a key).
    fn shown(&self) -> String {
        let u = &self.url;
        match u.port() {
            Some(port) => format!(
                "{}://{}:{port}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.path()
            ),
            None => format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.path()
            ),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current keys.
    pub(crate) fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a fetch has ever succeeded.
    pub(crate) fn has_keys(&self) -> bool {
        self.status().fetched.is_some()
    }

    /// Fetches now and then on schedule, for as long as the node runs.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut retry = FIRST_RETRY;
        loop {
            let wait = {
                let _one = self.fetching.lock().await;
                match self.fetch_and_keep().await {
                    Ok(next) => {
                        retry = FIRST_RETRY;
                        next
                    }
                    Err(()) => {
                        let wait = retry;
                        retry = (retry * 2).min(self.max_refresh);
                        wait
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// After a token named a key this node does not have: fetch again, unless a
    /// fetch finished while this one waited its turn (its result is what there is)
    /// or one started less than `auth.jwks_min_refresh_ms` ago. Bounded by the fetch
    /// timeout, lock included: a token never waits behind a queue of fetches.
    pub(crate) async fn refresh_for_unknown_key(&self) {
        let seen = self.finished.load(Relaxed);
        let refresh = async {
            let _one = self.fetching.lock().await;
            if self.finished.load(Relaxed) != seen {
                return;
            }
            let recent = self
                .status()
                .attempted
                .is_some_and(|at| at.elapsed() < self.min_refresh);
            if recent {
                return;
            }
            info!(jwks = %self.shown(), "a token names a key this node does not have; fetching the keys again");
            let _ = self.fetch_and_keep().await;
        };
        let _ = tokio::time::timeout(FETCH_TIMEOUT, refresh).await;
    }

    /// One fetch (the caller holds `fetching`): keeps the keys it brings, logs
    /// what changed, and says when to fetch next.
    async fn fetch_and_keep(&self) -> Result<Duration, ()> {
        self.status().attempted = Some(Instant::now());
        let fetched = self.fetch().await;
        self.finished.fetch_add(1, Relaxed);
        match fetched {
            Ok((set, skipped, next)) => {
                self.fetched_ok.fetch_add(1, Relaxed);
                let previous = self.keys();
                let changed = previous.kids() != set.kids();
                let recovered = {
                    let mut status = self.status();
                    status.fetched = Some(Instant::now());
                    status.error.take().is_some()
                };
                if changed || recovered {
                    info!(
                        jwks = %self.shown(),
                        keys = set.keys.len(),
                        kids = ?set.kids(),
                        skipped = ?skipped,
                        next_refresh_ms = next.as_millis() as u64,
                        "jwks loaded"
                    );
                } else {
                    debug!(jwks = %self.shown(), next_refresh_ms = next.as_millis() as u64, "jwks unchanged");
                }
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                Ok(next)
            }
            Err(e) => {
                self.fetch_failed.fetch_add(1, Relaxed);
                let age = self.status().fetched.map(|at| at.elapsed().as_secs());
                warn!(
                    jwks = %self.shown(),
                    error = %e,
                    keys_age_s = ?age,
                    "jwks fetch failed; keeping the last good keys"
                );
                self.status().error = Some(e.to_string());
                Err(())
            }
        }
    }

    async fn fetch(&self) -> Result<(KeySet, Vec<String>, Duration), FetchError> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(
                reqwest::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let next = refresh_after(response.headers(), self.min_refresh, self.max_refresh);
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let (set, skipped) = KeySet::parse(&body)?;
        Ok((set, skipped, next))
    }

    /// Why `/readyz` should answer 503: no keys yet, or keys older than
    /// `auth.jwks_stale_ms`.
    pub(crate) fn problem(&self) -> Option<String> {
        let status = self.status();
        let error = status
            .error
            .as_deref()
            .map_or(String::new(), |e| format!(": last fetch failed: {e}"));
        match status.fetched {
            None => Some(format!("jwks: no keys yet{error}")),
            Some(at) if at.elapsed() > self.stale_after => Some(format!(
                "jwks: the keys are {} s old, past auth.jwks_stale_ms{error}",
                at.elapsed().as_secs()
            )),
            Some(_) => None,
        }
    }

    /// For `/metrics`.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let fetched = self.status().fetched;
        let age = fetched.unwrap_or(self.created).elapsed();
        Snapshot {
            keys: self.keys().keys.len(),
            age_s: age.as_secs(),
            stale: fetched.is_none() || age > self.stale_after,
            fetched_ok: self.fetched_ok.load(Relaxed),
            fetch_failed: self.fetch_failed.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, CACHE_CONTROL};

    const MIN: Duration = Duration::from_secs(30);
    const MAX: Duration = Duration::from_secs(300);

    fn after(value: Option<&str>) -> Duration {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert(CACHE_CONTROL, HeaderValue::from_str(v).expect("header"));
        }
        refresh_after(&headers, MIN, MAX)
    }

    #[test]
    fn cache_control_sets_the_next_refresh_within_the_bounds() {
        assert_eq!(after(None), MAX, "nothing said: the maximum");
        assert_eq!(after(Some("public, max-age=120")), Duration::from_secs(120));
        assert_eq!(
            after(Some("max-age=5")),
            MIN,
            "never sooner than the minimum"
        );
        assert_eq!(after(Some("max-age=86400, must-revalidate")), MAX);
        assert_eq!(after(Some("no-cache")), MIN);
        assert_eq!(after(Some("private, No-Store")), MIN);
        assert_eq!(after(Some("max-age=0")), MIN);
        assert_eq!(after(Some("max-age=soon")), MAX, "unreadable: as if unsaid");
    }

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert!(parse_url("https://idp.example.com/.well-known/jwks.json").is_ok());
        assert!(parse_url("http://127.0.0.1:8080/certs").is_ok());
        assert!(parse_url("ftp://idp.example.com/jwks").is_err());
        assert!(parse_url("file:///etc/jwks.json").is_err());
        assert!(parse_url("https://user:pw@idp.example.com/jwks").is_err());
        assert!(parse_url("not a url").is_err());
    }

    /// An Ed25519 public key (RFC 8037's example) and a P-256 one (RFC 7517's).
    fn document() -> serde_json::Value {
        serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig",
             "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
             "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
             "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "rsa-enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"}
        ]})
    }

    #[test]
    fn each_key_verifies_only_its_own_algorithm_and_unusable_keys_are_skipped() {
        let body = serde_json::to_vec(&document()).expect("json");
        let (set, skipped) = KeySet::parse(&body).expect("two usable keys");
        assert_eq!(set.kids(), ["ed", "ec"]);
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        for (kid, why) in [
            ("enc", "encryption"),
            ("secret", "symmetric"),
            ("p521", "not supported"),
            ("rsa-enc", "not supported"),
        ] {
            assert!(
                skipped
                    .iter()
                    .any(|s| s.starts_with(kid) && s.contains(why)),
                "{kid}: {skipped:?}"
            );
        }
        assert!(set.find(Some("ed"), Algorithm::EdDSA).is_ok());
        assert!(set.find(Some("ec"), Algorithm::ES256).is_ok());
        assert!(
            matches!(set.find(Some("ec"), Algorithm::RS256), Err(AuthError::Invalid(m)) if m.contains("does not match")),
            "a token cannot choose another algorithm for a key"
        );
        assert_eq!(
            set.find(Some("gone"), Algorithm::ES256).err(),
            Some(AuthError::UnknownKey)
        );
        // Without kid: the one key of its algorithm, or nothing.
        assert!(set.find(None, Algorithm::ES256).is_ok());
        assert_eq!(
            set.find(None, Algorithm::RS256).err(),
            Some(AuthError::UnknownKey)
        );
    }

    #[test]
    fn a_document_without_a_usable_key_is_refused_with_the_reasons() {
        let only_secret = br#"{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}"#;
        let err = KeySet::parse(only_secret)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("symmetric"), "{err}");
        let err = KeySet::parse(br#"{"keys": []}"#)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("empty"), "{err}");
        assert!(KeySet::parse(b"<html>").is_err());
    }

    #[test]
    fn a_token_without_kid_is_refused_when_several_keys_could_verify_it() {
        let two = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "b", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]});
        let (set, _) = KeySet::parse(&serde_json::to_vec(&two).expect("json")).expect("parsed");
        assert!(
            matches!(set.find(None, Algorithm::EdDSA), Err(AuthError::Invalid(m)) if m.contains("several"))
        );
        assert!(set.find(Some("b"), Algorithm::EdDSA).is_ok());
    }
}
