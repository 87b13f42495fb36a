//! `auth.mode = "jwt"`: JWTs, API keys and tickets (docs/protocol.md#authentication).
//!
//! - A JWT (HS256 with `auth.jwt_secret`; RS256 or ES256 with the PEM public key in
//!   `auth.jwt_public_key_file`; RS*, PS*, ES256, ES384 or EdDSA with a key of the
//!   identity provider's JWKS at `auth.jwks_url`, `jwks.rs`) must carry `exp`; `nbf` is checked when present,
//!   `iss` and `aud` when configured. No clock leeway: Herald and the issuer are
//!   expected to keep time (NTP).
//! - Its optional `herald` claim lists the patterns the holder may subscribe and
//!   publish to; a missing list falls back to `auth.default_subscribe` /
//!   `auth.default_publish`.
//! - API keys (`auth.api_keys`) are accepted as Bearer on `/api/*` only, compared in
//!   constant time; they may publish anywhere and read `/api/topics`, but not get
//!   tickets.
//! - Upgrades take, in order: `Authorization: Bearer <JWT>`, `?ticket=`, or nothing
//!   (then `{"op":"auth"}` within `session.auth_timeout_ms`). A `token` in the query
//!   string is refused: it would end up in logs.
//!
//! Errors say what was wrong with the credentials, never what they were.

use actix_web::http::header;
use actix_web::HttpRequest;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::auth::jwks::Jwks;
use crate::auth::{AuthError, Authenticator, Identity, Upgrade, Via};
use crate::config::AuthConfig;
use crate::topic;

/// Why the JWT configuration cannot be used (reported as a config error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwtConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds neither an RSA nor an EC (P-256) public key in PEM")]
    Key { path: String },
    #[error("none of jwt_secret, jwt_public_key_file and jwks_url is set")]
    NoKey,
}

impl JwtConfigError {
    /// The configuration key at fault.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            JwtConfigError::NoKey => "auth.jwt_secret",
            _ => "auth.jwt_public_key_file",
        }
    }
}

/// The `herald` claim.
#[derive(Debug, Default, Deserialize)]
struct HeraldClaim {
    subscribe: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

/// The claims Herald reads; `exp`, `nbf`, `iss`, `aud` are checked by the validator.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    /// Required: checked by the validator first; optional here so a token without
    /// it is reported as "missing exp", not as malformed.
    exp: Option<u64>,
    #[serde(default)]
    herald: HeraldClaim,
}

/// One accepted key with the algorithms it verifies.
struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// The `jwt` authenticator.
pub(crate) struct JwtAuth {
    /// `auth.jwt_secret` and `auth.jwt_public_key_file`.
    verifiers: Vec<Verifier>,
    /// `auth.jwks_url`: keys picked by the token's `kid`.
    jwks: Option<Arc<Jwks>>,
    /// The claim checks every key shares; a JWKS key adds its one algorithm.
    checks: Validation,
    api_keys: Vec<Vec<u8>>,
    default_subscribe: Vec<String>,
    default_publish: Vec<String>,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret or the API keys.
        f.debug_struct("JwtAuth")
            .field("verifiers", &self.verifiers.len())
            .field("api_keys", &self.api_keys.len())
            .finish_non_exhaustive()
    }
}

impl JwtAuth {
    /// Builds the authenticator from `[auth]` (validated by the config loader), with
    /// the JWKS of `auth.jwks_url` when there is one.
    pub(crate) fn new(c: &AuthConfig, jwks: Option<Arc<Jwks>>) -> Result<JwtAuth, JwtConfigError> {
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = 0;
            v.validate_nbf = true;
            // A configured issuer or audience must be present, not merely
            // match when present.
            let mut required = vec!["exp"];
            if !c.issuer.is_empty() {
                v.set_issuer(&[&c.issuer]);
                required.push("iss");
            }
            if c.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&[&c.audience]);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            v
        };
        let mut verifiers = Vec::new();
        if !c.jwt_secret.is_empty() {
            verifiers.push(Verifier {
                key: DecodingKey::from_secret(c.jwt_secret.as_bytes()),
                validation: validation(Algorithm::HS256),
            });
        }
        if !c.jwt_public_key_file.is_empty() {
            let path = &c.jwt_public_key_file;
            let pem = std::fs::read(path).map_err(|source| JwtConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let verifier = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                Verifier {
                    key,
                    validation: validation(Algorithm::RS256),
                }
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                Verifier {
                    key,
                    validation: validation(Algorithm::ES256),
                }
            } else {
                return Err(JwtConfigError::Key { path: path.clone() });
            };
            verifiers.push(verifier);
        }
        if verifiers.is_empty() && jwks.is_none() {
            return Err(JwtConfigError::NoKey);
        }
        Ok(JwtAuth {
            verifiers,
            jwks,
            checks: validation(Algorithm::RS256),
            api_keys: c.api_keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            default_subscribe: c.default_subscribe.clone(),
            default_publish: c.default_publish.clone(),
        })
    }

    /// Verifies a JWT and returns the identity it grants.
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("not a JWT".into()))?;
        let data = match self.static_verifier(&header) {
            Some(v) => jsonwebtoken::decode::<Claims>(token, &v.key, &v.validation),
            None => {
                // A JWKS holds no secrets: an HMAC token without `auth.jwt_secret`
                // is refused here, without a fetch for a key that cannot exist.
                let jwks = self
                    .jwks
                    .as_ref()
                    .filter(|_| !is_hmac(header.alg))
                    .ok_or_else(|| {
                        AuthError::Invalid(format!(
                            "algorithm {:?} is not accepted here",
                            header.alg
                        ))
                    })?;
                if !jwks.has_keys() {
                    return Err(AuthError::NoKeysYet);
                }
                let keys = jwks.keys();
                let key = keys.find(header.kid.as_deref(), header.alg)?;
                let mut checks = self.checks.clone();
                checks.algorithms = vec![header.alg];
                jsonwebtoken::decode::<Claims>(token, key, &checks)
            }
        }
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::Invalid("token not valid yet (nbf)".into()),
                K::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                K::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                K::InvalidSignature => AuthError::Invalid("bad signature".into()),
                K::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing {c}")),
                _ => AuthError::Invalid("malformed token".into()),
            }
        })?;
        let claims = data.claims;
        let exp = claims
            .exp
            .ok_or_else(|| AuthError::Invalid("missing exp".into()))?;
        // RFC 7519: not accepted on or after `exp`. The validator lets the second of
        // `exp` itself through; a session ends in that second (`now >= exp`), so a
        // connection let in then would be closed with 4001 at once.
        if crate::clock::now_secs() >= exp {
            return Err(AuthError::Expired);
        }
        let grants = |list: Option<Vec<String>>, default: &[String], what: &str| {
            let list = list.unwrap_or_else(|| default.to_vec());
            match list.iter().find(|p| topic::validate_pattern(p).is_err()) {
                Some(bad) => Err(AuthError::Invalid(format!(
                    "herald.{what} holds an invalid pattern `{bad}`"
                ))),
                None => Ok(list),
            }
        };
        Ok(Identity {
            subject: claims.sub,
            subscribe: grants(
                claims.herald.subscribe,
                &self.default_subscribe,
                "subscribe",
            )?,
            publish: grants(claims.herald.publish, &self.default_publish, "publish")?,
            expires: Some(exp),
            via: Via::Jwt,
        })
    }

    /// The static key for the token's algorithm, unless the token is one for the
    /// JWKS: HS256 is always `auth.jwt_secret` (a JWKS holds no secrets); another
    /// algorithm goes to the JWKS when the token names a key (`kid`) or no static
    /// key takes it.
    fn static_verifier(&self, header: &jsonwebtoken::Header) -> Option<&Verifier> {
        let verifier = self
            .verifiers
            .iter()
            .find(|v| v.validation.algorithms.contains(&header.alg));
        let for_jwks = self.jwks.is_some()
            && !is_hmac(header.alg)
            && (header.kid.is_some() || verifier.is_none());
        if for_jwks {
            None
        } else {
            verifier
        }
    }

    /// Whether `key` is one of the configured API keys (constant time per key).
    fn is_api_key(&self, key: &str) -> bool {
        let key = key.as_bytes();
        // Every configured key is compared, so the time does not tell which matched.
        self.api_keys
            .iter()
            .fold(0u8, |hit, k| hit | k.as_slice().ct_eq(key).unwrap_u8())
            == 1
    }
}

/// Whether `alg` is an HMAC (shared-secret) algorithm.
fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The Bearer credential of a request, if it has one.
fn bearer(req: &HttpRequest) -> Result<Option<&str>, AuthError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Invalid("unreadable Authorization header".into()))?;
    match value.split_once(' ') {
        Some((scheme, cred))
            if scheme.eq_ignore_ascii_case("bearer") && !cred.trim().is_empty() =>
        {
            Ok(Some(cred.trim()))
        }
        _ => Err(AuthError::Invalid(
            "Authorization must be `Bearer <token>`".into(),
        )),
    }
}

/// The value of query parameter `name`, if present.
fn query_param<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.query_string()
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Authenticator for JwtAuth {
    fn upgrade(&self, req: &HttpRequest) -> Result<Upgrade, AuthError> {
        if query_param(req, "token").is_some() || query_param(req, "access_token").is_some() {
            return Err(AuthError::Invalid(
                "tokens are never accepted in the URL; use the Authorization header, a ticket, or {\"op\":\"auth\"}".into(),
            ));
        }
        if let Some(token) = bearer(req)? {
            return self.verify(token).map(Upgrade::Identified);
        }
        if let Some(ticket) = query_param(req, "ticket") {
            return Ok(Upgrade::Ticket(ticket.to_owned()));
        }
        Ok(Upgrade::Later)
    }

    fn token(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify(token)
    }

    fn api(&self, req: &HttpRequest) -> Result<Identity, AuthError> {
        let cred = bearer(req)?.ok_or(AuthError::Missing)?;
        if self.is_api_key(cred) {
            return Ok(Identity {
                subject: None,
                subscribe: vec![">".into()],
                publish: vec![">".into()],
                expires: None,
                via: Via::ApiKey,
            });
        }
        self.verify(cred)
    }

    fn may_request_ticket(&self, identity: &Identity) -> Result<(), AuthError> {
        if identity.via != Via::Jwt {
            return Err(AuthError::Forbidden(
                "only a JWT holder may request a ticket (it carries the token's identity and permissions)".into(),
            ));
        }
        Ok(())
    }

    fn enabled(&self) -> bool {
        true
    }

    fn refresh_keys(&self) -> BoxFuture<'static, ()> {
        let jwks = self.jwks.clone();
        Box::pin(async move {
            if let Some(jwks) = jwks {
                jwks.refresh_for_unknown_key().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn auth(extra: impl FnOnce(&mut AuthConfig)) -> JwtAuth {
        let mut c = AuthConfig {
            mode: "jwt".into(),
            jwt_secret: "s3cret".into(),
            api_keys: vec!["key-1".into(), "key-2".into()],
            ..AuthConfig::default()
        };
        extra(&mut c);
        JwtAuth::new(&c, None).expect("valid config")
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    #[test]
    fn claims_become_permissions_with_configured_defaults() {
        let a = auth(|_| {});
        let exp = crate::clock::now_secs() + 60;
        let id = a
            .verify(&token(
                json!({"sub": "u1", "exp": exp, "herald": {"subscribe": ["orders.*"]}}),
                "s3cret",
            ))
            .expect("valid");
        assert_eq!(id.subject.as_deref(), Some("u1"));
        assert_eq!(id.subscribe, ["orders.*"]);
        assert_eq!(id.publish, Vec::<String>::new(), "default_publish is empty");
        assert_eq!(id.expires, Some(exp));
        let id = a
            .verify(&token(json!({"exp": exp}), "s3cret"))
            .expect("valid");
        assert_eq!(id.subscribe, [">"], "default_subscribe");
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason_that_never_quotes_them() {
        let a = auth(|c| {
            c.issuer = "issuer-x".into();
            c.audience = "herald".into();
        });
        let ok = json!({"exp": crate::clock::now_secs() + 60, "iss": "issuer-x", "aud": "herald"});
        assert!(a.verify(&token(ok.clone(), "s3cret")).is_ok());
        let cases = [
            (token(ok.clone(), "wrong"), "bad signature"),
            (
                token(json!({"iss": "issuer-x", "aud": "herald"}), "s3cret"),
                "missing exp",
            ),
            (
                token(
                    json!({"exp": crate::clock::now_secs() - 1, "iss": "issuer-x", "aud": "herald"}),
                    "s3cret",
                ),
                "credentials expired",
            ),
            (
                // On `exp` itself (RFC 7519: "on or after").
                token(
                    json!({"exp": crate::clock::now_secs(), "iss": "issuer-x", "aud": "herald"}),
                    "s3cret",
                ),
                "credentials expired",
            ),
            (
                token(
                    json!({"exp": crate::clock::now_secs() + 60, "iss": "other", "aud": "herald"}),
                    "s3cret",
                ),
                "wrong issuer",
            ),
            (
                token(
                    json!({"exp": crate::clock::now_secs() + 60, "iss": "issuer-x", "aud": "x"}),
                    "s3cret",
                ),
                "wrong audience",
            ),
            (
                token(
                    json!({"exp": crate::clock::now_secs() + 60, "nbf": crate::clock::now_secs() + 30, "iss": "issuer-x", "aud": "herald"}),
                    "s3cret",
                ),
                "nbf",
            ),
            (
                token(
                    json!({"exp": crate::clock::now_secs() + 60, "iss": "issuer-x", "aud": "herald", "herald": {"publish": ["a..b"]}}),
                    "s3cret",
                ),
                "invalid pattern",
            ),
            ("not.a.jwt".to_owned(), "not a JWT"),
        ];
        for (t, why) in cases {
            let err = a.verify(&t).expect_err(why).to_string();
            assert!(err.contains(why), "{err} should say {why}");
            assert!(!err.contains(&t), "the error never quotes the token");
        }
    }

    #[test]
    fn a_configured_issuer_or_audience_must_be_present() {
        let a = auth(|c| {
            c.issuer = "issuer-x".into();
            c.audience = "herald".into();
        });
        let exp = crate::clock::now_secs() + 60;
        for claims in [
            json!({"exp": exp, "aud": "herald"}),
            json!({"exp": exp, "iss": "issuer-x"}),
            json!({"exp": exp}),
        ] {
            let err = a
                .verify(&token(claims.clone(), "s3cret"))
                .expect_err("refused");
            assert!(err.to_string().contains("missing"), "{claims}: {err}");
        }
    }

    #[test]
    fn api_keys_match_exactly() {
        let a = auth(|_| {});
        assert!(a.is_api_key("key-1"));
        assert!(a.is_api_key("key-2"));
        assert!(!a.is_api_key("key-"));
        assert!(!a.is_api_key("key-12"));
        assert!(!a.is_api_key(""));
    }

    #[test]
    fn a_key_file_that_is_not_a_public_key_is_a_config_error() {
        let dir = std::env::temp_dir().join(format!("herald-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("key.pem");
        std::fs::write(&path, "not a key").expect("write");
        let c = AuthConfig {
            mode: "jwt".into(),
            jwt_public_key_file: path.display().to_string(),
            ..AuthConfig::default()
        };
        assert!(matches!(
            JwtAuth::new(&c, None),
            Err(JwtConfigError::Key { .. })
        ));
        let c = AuthConfig {
            mode: "jwt".into(),
            ..AuthConfig::default()
        };
        assert!(matches!(JwtAuth::new(&c, None), Err(JwtConfigError::NoKey)));
    }
}
