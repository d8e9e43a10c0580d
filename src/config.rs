//! The orders service's settings: the platform's sections
//! (`grpc_platform::config`: layering, validation, redaction, exit 78) and
//! its own, `database`.
//!
//! Layers, later wins (README "Configuration"): built-in defaults →
//! `config/default.toml` → `config/{ORDERS_ENV}.toml` → the `--config` file
//! → `ORDERS__SECTION__KEY` environment variables. `config/` is looked up in
//! the working directory or at `ORDERS_CONFIG_DIR`.

pub use grpc_platform::config::{
    AdminSettings, AuthSettings, ConfigError, DevSettings, EXIT_CONFIG, Environment, LogFormat,
    PlatformSettings, ServerSettings, ShutdownSettings, Sources, TelemetrySettings, TlsSettings,
    mask_password,
};
use grpc_platform::config::{ServiceSettings, redact_url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The prefix of the environment variables (`ORDERS_ENV`,
/// `ORDERS_CONFIG_DIR`, `ORDERS__SECTION__KEY`).
pub const ENV_PREFIX: &str = "ORDERS";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May hold a password: only shown with it masked.
    #[serde(serialize_with = "redact_url")]
    pub url: SecretString,
    pub max_connections: u32,
    /// SQLite: writes waiting together share one transaction and one fsync
    /// (group commit). `false` gives one transaction per write.
    pub group_commit: bool,
    /// SQLite: current orders kept in memory for reads (0 turns it off).
    pub cache_orders: usize,
}

impl DatabaseSettings {
    /// How the store opens its connections and commits.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            max_connections: self.max_connections,
            group_commit: self.group_commit,
            cache_orders: self.cache_orders,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("sqlite://data/orders.db"),
            max_connections: 8,
            group_commit: true,
            cache_orders: 10_000,
        }
    }
}

/// The orders service's own sections, beside the platform's.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersSections {
    pub database: DatabaseSettings,
}

impl ServiceSettings for OrdersSections {
    const SECTIONS: &'static [&'static str] = &["database"];

    fn validate(&self, _platform: &PlatformSettings, problems: &mut Vec<String>) {
        self.database.validate(problems);
    }
}

impl DatabaseSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        let url = self.url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            problems.push(format!(
                "database.url: {} is neither sqlite://… nor postgres://…",
                mask_password(url)
            ));
        }
        if self.max_connections == 0 {
            problems.push("database.max_connections: must be more than 0".into());
        }
    }

    /// `database.url`, unmasked (it may hold a password: never log it).
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }
}

/// Everything the server reads: the platform's sections (reached through
/// `Deref`, as `settings.server`) and the service's (`settings.service`).
/// `Settings::load(ENV_PREFIX, &sources)` reads and validates them.
pub type Settings = grpc_platform::config::Settings<OrdersSections>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    fn keyed(dir: &Path) -> String {
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
        format!(
            "[auth]\nissuer = \"i\"\naudience = \"a\"\njwks_file = {:?}\n[tls]\nenabled = false\n",
            jwks.display().to_string()
        )
    }

    #[test]
    fn later_layers_win_over_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "default.toml",
            &format!(
                "{}[server]\naddr = \"127.0.0.1:1\"\nreflection = false\n",
                keyed(dir.path())
            ),
        );
        write(
            dir.path(),
            "test.toml",
            "[server]\naddr = \"127.0.0.1:2\"\n",
        );
        let extra = dir.path().join("extra.toml");
        std::fs::write(&extra, "[database]\nmax_connections = 3\n").unwrap();
        let s = Settings::load(
            ENV_PREFIX,
            &Sources {
                environment: Some("test".into()),
                config_dir: Some(dir.path().into()),
                file: Some(extra),
                use_env_vars: false,
            },
        )
        .unwrap();
        assert_eq!(s.server.addr, "127.0.0.1:2".parse().unwrap());
        assert!(!s.server.reflection);
        assert_eq!(s.service.database.max_connections, 3);
        assert_eq!(s.environment, Environment::Test);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "production.toml",
            "[server]\naddr = \"nowhere\"\n[tls]\nenabled = false\n[auth]\nalgorithms = [\"HS256\", \"none\"]\nhs256_secret = \"short\"\n",
        );
        let err = Settings::load(
            ENV_PREFIX,
            &Sources {
                environment: Some("production".into()),
                config_dir: Some(dir.path().into()),
                file: None,
                use_env_vars: false,
            },
        )
        .unwrap_err();
        let text = err.to_string();
        for key in [
            "server.addr",
            "tls.enabled",
            "auth.issuer",
            "auth.audience",
            "auth.algorithms",
            "auth.hs256_secret",
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
        assert!(!text.contains("short"), "secret leaked: {text}");
    }

    #[test]
    fn unknown_environments_and_keys_are_refused() {
        let err = Settings::load(
            ENV_PREFIX,
            &Sources {
                environment: Some("staging".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("ORDERS_ENV"));
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[server]\nadress = \"x\"\n");
        let err = Settings::load(
            ENV_PREFIX,
            &Sources {
                config_dir: Some(dir.path().into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
    }

    #[test]
    fn abuse_limits_that_would_disable_a_defence_are_refused() {
        let mut s = Settings::default();
        s.server.max_header_list_bytes = 100;
        s.server.http2_max_pending_accept_reset_streams = 0;
        s.server.http2_max_local_error_reset_streams = 0;
        s.server.handshake_timeout = Duration::ZERO;
        s.tls.reload_interval = Duration::ZERO;
        let text = s.validate().unwrap_err().to_string();
        for key in [
            "server.max_header_list_bytes",
            "server.http2_max_pending_accept_reset_streams",
            "server.http2_max_local_error_reset_streams",
            "server.handshake_timeout_secs",
            "tls.reload_secs",
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
        let defaults = ServerSettings::default();
        assert_eq!(defaults.max_header_list_bytes, 16 * 1024);
        assert_eq!(defaults.handshake_timeout, Duration::from_secs(10));
    }

    #[test]
    fn jwks_url_keys_are_validated_each_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::default();
        s.tls.enabled = false;
        s.auth.issuer = "i".into();
        s.auth.audience = "a".into();
        s.auth.jwks_url = Some("https://login.example.com/keys".into());
        s.validate()
            .expect("an https JWKS URL alone is a key source");

        s.auth.jwks_url = Some("http://login.example.com/keys".into());
        s.auth.jwks_ca = Some(dir.path().join("missing.pem"));
        s.auth.jwks_timeout = Duration::ZERO;
        s.auth.jwks_max_bytes = 10;
        let text = s.validate().unwrap_err().to_string();
        for expected in [
            "auth.jwks_url: must be an https:// URL",
            "auth.jwks_ca: cannot read",
            "auth.jwks_timeout_ms",
            "auth.jwks_max_bytes",
        ] {
            assert!(text.contains(expected), "{expected} missing from: {text}");
        }

        s.auth.jwks_url = None;
        s.auth.jwks_ca = None;
        s.auth.jwks_timeout = Duration::from_millis(5_000);
        s.auth.jwks_max_bytes = 1024;
        s.auth.jwks_file = Some(dir.path().join("jwks.json"));
        std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();
        s.auth.jwks_min_refresh = Duration::ZERO;
        s.validate()
            .expect("no rate limit is allowed outside production");
        s.environment = Environment::Production;
        s.tls.enabled = true;
        let text = s.validate().unwrap_err().to_string();
        assert!(text.contains("auth.jwks_min_refresh_secs"), "{text}");
    }

    #[test]
    fn secrets_are_redacted_in_the_rendered_configuration() {
        let mut s = Settings::default();
        s.auth.hs256_secret = Some(SecretString::from("super-secret-value-that-is-long-enough"));
        s.service.database.url = SecretString::from("postgres://app:hunter2@db:5432/orders");
        let text = s.redacted_toml();
        assert!(!text.contains("super-secret"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres://app:"), "{text}");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn given_variables_stand_in_for_the_environment_and_unknown_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "production.toml",
            "[shutdown]\ndrain_secs = 10\n",
        );
        let sources = Sources {
            environment: Some("production".into()),
            config_dir: Some(dir.path().into()),
            file: None,
            use_env_vars: false,
        };
        let vars = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        // Not validated: production without keys or certificates still reads.
        let s = Settings::read_with_vars(
            ENV_PREFIX,
            &sources,
            vars(&[
                ("ORDERS__DATABASE__URL", "postgres://u:p@db:5432/orders"),
                ("ORDERS__AUTH__ALGORITHMS", "ES256,RS256"),
            ]),
        )
        .unwrap();
        assert_eq!(s.environment, Environment::Production);
        assert_eq!(s.service.database.url(), "postgres://u:p@db:5432/orders");
        assert_eq!(s.auth.algorithms, ["ES256", "RS256"]);
        assert_eq!(s.shutdown.drain, Duration::from_secs(10));
        assert!(s.validate().is_err());
        let err = Settings::read_with_vars(
            ENV_PREFIX,
            &sources,
            vars(&[("ORDERS__DATABASE__URI", "x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("uri"), "{err}");
    }
}
