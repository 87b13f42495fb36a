//! The effective configuration with every secret masked, for `herald check-config`.

use super::Config;

impl Config {
    /// The effective configuration as TOML with every secret replaced by `***`.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        let mask = |s: &mut String| {
            if !s.is_empty() {
                *s = "***".into();
            }
        };
        mask(&mut masked.auth.jwt_secret);
        for k in &mut masked.auth.api_keys {
            mask(k);
        }
        for b in &mut masked.bridge.kafka {
            for (k, v) in &mut b.properties {
                let k = k.to_ascii_lowercase();
                if k.contains("password") || k.contains("secret") || k.contains("key") {
                    mask(v);
                }
            }
        }
        for b in &mut masked.bridge.nats {
            mask(&mut b.password);
            mask(&mut b.token);
            mask(&mut b.nkey);
            b.url = mask_url_credentials(&b.url);
        }
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// `nats://user:pass@host` → `nats://***@host`, for every URL of a comma-separated
/// list, with or without a scheme.
pub(crate) fn mask_url_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let lead = url.len() - url.trim_start().len();
            let start = url.find("://").map_or(lead, |i| i + 3);
            let end = url[start..].find('/').map_or(url.len(), |i| start + i);
            match url[start..end].rfind('@') {
                Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
                None => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NatsBridgeConfig;

    #[test]
    fn masked_output_hides_secrets() {
        let mut c = Config::default();
        c.auth.jwt_secret = "hunter2".into();
        c.auth.api_keys = vec!["k-123".into()];
        let out = c.to_masked_toml();
        assert!(!out.contains("hunter2") && !out.contains("k-123"), "{out}");
        assert!(out.contains("***"));
        assert!(out.contains("listen = \"127.0.0.1:8080\""), "{out}");
    }

    #[test]
    fn masking_hides_every_nats_password_and_never_panics() {
        // Found by fuzzing: a user-info `@` before the first `://` (a list whose first
        // URL has no scheme) panicked `check-config`, and only the first URL of a
        // list was masked.
        for (url, secrets) in [
            ("u:pw1@127.0.0.1:4222,nats://127.0.0.1:4223", vec!["pw1"]),
            (
                "nats://u:pw1@h1:4222, nats://v:pw2@h2:4222",
                vec!["pw1", "pw2"],
            ),
            ("nats://h1:4222,tls://v:pw2@h2:4222", vec!["pw2"]),
            ("nats://tok3n@h1:4222/path@x", vec!["tok3n"]),
        ] {
            let mut c = Config::default();
            c.bridge.nats.push(NatsBridgeConfig {
                url: url.into(),
                ..NatsBridgeConfig::default()
            });
            let out = c.to_masked_toml();
            for secret in secrets {
                assert!(!out.contains(secret), "{url}: {secret} shown in\n{out}");
            }
            assert!(out.contains("***@"), "{url}: {out}");
        }
        assert_eq!(
            mask_url_credentials("nats://a:b@h1:1, c@h2:2,nats://h3:3"),
            "nats://***@h1:1, ***@h2:2,nats://h3:3"
        );
    }
}
