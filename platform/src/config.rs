//! The configuration core: the platform's sections, each validated with
//! its key named, and the layered loader a service's settings go through.
//!
//! Layers, later wins: built-in defaults (the `Default` impls) →
//! `config/default.toml` → `config/{PREFIX_ENV}.toml` → the `--config` file
//! → `PREFIX__SECTION__KEY` environment variables. `config/` is looked up in
//! the working directory or at `PREFIX_CONFIG_DIR`. `PREFIX` is the
//! service's, in capitals.
//!
//! The platform's sections are `server`, `admin`, `tls`, `auth`,
//! `telemetry`, `shutdown` and `dev`; a service adds its own
//! ([`ServiceSettings::SECTIONS`]). A key no section knows is refused. A bad
//! configuration is reported whole (every problem, each naming its key)
//! before anything binds; the program exits with [`EXIT_CONFIG`] (78,
//! `EX_CONFIG`). Secrets are wrapped in `SecretString` so `Debug` cannot
//! print them, and serialize as `[redacted]` for `check-config`.

use crate::auth::{JwksUrl, KeyError, KeySource, TokenRules, Verifier, VerifierOptions};
pub use crate::telemetry::{LogFormat, TelemetrySettings};
use jsonwebtoken::Algorithm;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// The exit code of a bad configuration (sysexits.h `EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Test,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Test => "test",
            Environment::Production => "production",
        }
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "development" => Ok(Environment::Development),
            "test" => Ok(Environment::Test),
            "production" => Ok(Environment::Production),
            other => Err(format!(
                "unknown environment {other:?} (expected development, test or production)"
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub addr: String,
    /// Serve gRPC reflection (v1 and v1alpha) so grpcurl works without protos.
    pub reflection: bool,
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub concurrency_limit: usize,
    /// Connections are asked to go away (GOAWAY) after this age, ±10% per
    /// connection; 0: never.
    pub max_connection_age_secs: u64,
    /// How long a connection past its age may finish the calls and streams
    /// it carries before it is closed.
    pub max_connection_age_grace_secs: u64,
    pub keepalive_interval_secs: u64,
    /// Largest request header block (metadata included) a client may send,
    /// in bytes (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub max_header_list_bytes: u32,
    /// Streams a client may open and reset before the server accepts them,
    /// then GOAWAY: the HTTP/2 rapid-reset defence (CVE-2023-44487).
    pub http2_max_pending_accept_reset_streams: usize,
    /// Streams the server may reset because of a client's protocol errors,
    /// then GOAWAY (the "MadeYouReset" defence, CVE-2025-8671).
    pub http2_max_local_error_reset_streams: usize,
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake_timeout_secs: u64,
    /// A connection on which no byte moves for this long is closed; 0: never.
    /// HTTP/2 keepalive PINGs count as traffic (see `tls::IdleTimeout`).
    pub idle_timeout_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:50051".into(),
            reflection: true,
            default_timeout_ms: 10_000,
            max_timeout_ms: 60_000,
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 200,
            concurrency_limit: 1_000,
            max_connection_age_secs: 300,
            max_connection_age_grace_secs: 30,
            keepalive_interval_secs: 30,
            max_header_list_bytes: 16 * 1024,
            http2_max_pending_accept_reset_streams: 20,
            http2_max_local_error_reset_streams: 1024,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    pub addr: String,
    /// How often readiness runs the service's check.
    pub check_interval_ms: u64,
    /// How long one check may take before it counts as failed.
    pub check_timeout_ms: u64,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:8081".into(),
            check_interval_ms: 500,
            check_timeout_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub enabled: bool,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
    pub reload_secs: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            cert: None,
            key: None,
            client_ca: None,
            reload_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<String>,
    pub leeway_secs: u64,
    pub public_keys: Vec<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    #[serde(serialize_with = "redact_opt")]
    pub hs256_secret: Option<SecretString>,
    /// PEM CA certificate(s) trusted for `jwks_url` instead of the public
    /// (webpki) roots.
    pub jwks_ca: Option<PathBuf>,
    /// Re-read every key source this often; 0: only on unknown `kid`s.
    pub jwks_refresh_secs: u64,
    /// At most one unknown-`kid` refresh per this many seconds, for all
    /// callers together, so a flood of made-up `kid`s cannot hammer the
    /// key source.
    pub jwks_min_refresh_secs: u64,
    /// Deadline of one JWKS fetch (connect included).
    pub jwks_timeout_ms: u64,
    /// Largest JWKS document accepted from `jwks_url`.
    pub jwks_max_bytes: usize,
    /// Verified tokens remembered until their `exp`; 0 turns the cache off.
    pub token_cache_size: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            algorithms: vec!["ES256".into(), "RS256".into(), "EdDSA".into()],
            leeway_secs: 30,
            public_keys: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            hs256_secret: None,
            jwks_ca: None,
            jwks_refresh_secs: 300,
            jwks_min_refresh_secs: 10,
            jwks_timeout_ms: 5_000,
            jwks_max_bytes: 256 * 1024,
            token_cache_size: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Lame-duck time: health says NOT_SERVING but calls are still served.
    pub drain_secs: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self { drain_secs: 5 }
    }
}

/// Development conveniences (refused in production).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevSettings {
    /// Where `dev-certs` writes, and `dev-token` reads, the development CA,
    /// server certificate and token-signing key.
    pub certs_dir: PathBuf,
    /// Create `certs_dir` on start when it is missing.
    pub generate_certs: bool,
    pub token_issuer: String,
    pub token_audience: String,
}

impl Default for DevSettings {
    fn default() -> Self {
        Self {
            certs_dir: PathBuf::from("certs/dev"),
            generate_certs: false,
            // The service's configuration files name its own.
            token_issuer: "dev".into(),
            token_audience: "dev".into(),
        }
    }
}

/// The platform's sections of a service's configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformSettings {
    #[serde(skip_deserializing, default = "default_env")]
    pub environment: Environment,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub tls: TlsSettings,
    pub auth: AuthSettings,
    pub telemetry: TelemetrySettings,
    pub shutdown: ShutdownSettings,
    pub dev: DevSettings,
}

/// The top-level sections [`PlatformSettings`] holds.
pub const PLATFORM_SECTIONS: [&str; 7] = [
    "server",
    "admin",
    "tls",
    "auth",
    "telemetry",
    "shutdown",
    "dev",
];

fn default_env() -> Environment {
    Environment::Development
}

impl Default for PlatformSettings {
    fn default() -> Self {
        Self {
            environment: Environment::Development,
            server: Default::default(),
            admin: Default::default(),
            tls: Default::default(),
            auth: Default::default(),
            telemetry: Default::default(),
            shutdown: Default::default(),
            dev: Default::default(),
        }
    }
}

/// Serializes a secret that may be absent as `[redacted]`.
pub fn redact_opt<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}

/// Serializes a URL with its password masked ([`mask_password`]).
pub fn redact_url<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_password(v.expose_secret()))
}

/// The URL with any password replaced, fit for logs.
pub fn mask_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("[redacted]"));
            u.to_string()
        }
        Ok(_) => raw.to_owned(),
        Err(_) => "[unparsable url]".to_owned(),
    }
}

/// Everything wrong with a configuration, each line naming its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// Where to read configuration from; tests build one by hand.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `{PREFIX}_ENV`.
    pub environment: Option<String>,
    /// `{PREFIX}_CONFIG_DIR` (default `./config`).
    pub config_dir: Option<PathBuf>,
    /// `--config`.
    pub file: Option<PathBuf>,
    /// Read `{PREFIX}__*` environment variables.
    pub use_env_vars: bool,
}

impl Sources {
    /// The sources a real process uses, for the environment prefix `prefix`.
    pub fn from_process(prefix: &str, file: Option<PathBuf>) -> Self {
        Self {
            environment: std::env::var(format!("{prefix}_ENV")).ok(),
            config_dir: std::env::var_os(format!("{prefix}_CONFIG_DIR")).map(PathBuf::from),
            file,
            use_env_vars: true,
        }
    }
}

/// A service's own sections of the configuration, beside the platform's.
pub trait ServiceSettings: DeserializeOwned + Serialize + Default {
    /// The top-level sections it reads (a `database` section, say); they
    /// must not be the platform's.
    const SECTIONS: &'static [&'static str];

    /// Adds every problem, each naming its key, to `problems`.
    fn validate(&self, platform: &PlatformSettings, problems: &mut Vec<String>);
}

/// Reads every layer for the environment prefix `prefix`, merged and typed
/// (unknown keys refused), not validated. `vars`, when given, stand in for
/// the process's `{prefix}__*` variables.
pub fn read_layers<S: ServiceSettings>(
    prefix: &str,
    sources: &Sources,
    vars: Option<config::Map<String, String>>,
) -> Result<(PlatformSettings, S), ConfigError> {
    use config::{Config, Environment as Env, File, Value};

    let environment: Environment = sources
        .environment
        .as_deref()
        .unwrap_or("development")
        .parse()
        .map_err(|e| ConfigError(vec![format!("{prefix}_ENV: {e}")]))?;
    let dir = sources
        .config_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("config"));
    let mut builder = Config::builder()
        .add_source(File::from(dir.join("default.toml")).required(false))
        .add_source(File::from(dir.join(format!("{}.toml", environment.as_str()))).required(false));
    if let Some(file) = &sources.file {
        if !file.is_file() {
            return Err(ConfigError(vec![format!(
                "--config: cannot read {}",
                file.display()
            )]));
        }
        builder = builder.add_source(File::from(file.as_path()).required(true));
    }
    if sources.use_env_vars || vars.is_some() {
        builder = builder.add_source(
            Env::with_prefix(prefix)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("auth.algorithms")
                .with_list_parse_key("auth.public_keys")
                .try_parsing(true)
                .source(vars),
        );
    }
    let failed = |e: config::ConfigError| ConfigError(vec![e.to_string()]);
    let merged: config::Map<String, Value> = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(failed)?;
    // A top-level key neither side declares is refused here, whatever the
    // service's types would let through; within a section, the section's
    // `deny_unknown_fields` refuses unknown keys.
    let mut unknown: Vec<String> = merged
        .keys()
        .filter(|key| {
            !PLATFORM_SECTIONS.contains(&key.as_str()) && !S::SECTIONS.contains(&key.as_str())
        })
        .map(|key| {
            format!(
                "{key}: unknown section (expected one of {})",
                known_sections::<S>()
            )
        })
        .collect();
    if let Some(taken) = S::SECTIONS.iter().find(|s| PLATFORM_SECTIONS.contains(s)) {
        unknown.push(format!(
            "{taken}: a service section may not be one of the platform's"
        ));
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(ConfigError(unknown));
    }
    let (platform, service): (config::Map<String, Value>, config::Map<String, Value>) = merged
        .into_iter()
        .partition(|(key, _)| PLATFORM_SECTIONS.contains(&key.as_str()));
    let mut platform: PlatformSettings = Value::from(platform).try_deserialize().map_err(failed)?;
    let service: S = Value::from(service).try_deserialize().map_err(failed)?;
    platform.environment = environment;
    Ok((platform, service))
}

/// The top-level sections a configuration may have, for messages.
fn known_sections<S: ServiceSettings>() -> String {
    PLATFORM_SECTIONS
        .iter()
        .chain(S::SECTIONS)
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

impl PlatformSettings {
    /// Adds every problem of the platform's sections, each naming its key.
    pub fn validate(&self, problems: &mut Vec<String>) {
        let production = self.environment == Environment::Production;
        for (key, addr) in [
            ("server.addr", &self.server.addr),
            ("admin.addr", &self.admin.addr),
        ] {
            if addr.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "{key}: {addr:?} is not an address like 0.0.0.0:50051"
                ));
            }
        }
        if self.server.default_timeout_ms == 0 {
            problems.push("server.default_timeout_ms: must be more than 0".into());
        }
        if self.server.max_timeout_ms < self.server.default_timeout_ms {
            problems
                .push("server.max_timeout_ms: must be at least server.default_timeout_ms".into());
        }
        if self.server.max_message_bytes < 1024 {
            problems.push("server.max_message_bytes: must be at least 1024".into());
        }
        if self.server.max_concurrent_streams == 0 {
            problems.push("server.max_concurrent_streams: must be more than 0".into());
        }
        if self.admin.check_interval_ms == 0 {
            problems.push("admin.check_interval_ms: must be more than 0".into());
        }
        if self.admin.check_timeout_ms == 0 {
            problems.push("admin.check_timeout_ms: must be more than 0".into());
        }
        if self.server.concurrency_limit == 0 {
            problems.push("server.concurrency_limit: must be more than 0".into());
        }
        // Abuse limits: zero would disable a defence or refuse every call.
        if !(4 * 1024..=1024 * 1024).contains(&self.server.max_header_list_bytes) {
            problems.push("server.max_header_list_bytes: must be 4096 to 1048576".into());
        }
        for (key, value) in [
            (
                "server.http2_max_pending_accept_reset_streams",
                self.server.http2_max_pending_accept_reset_streams,
            ),
            (
                "server.http2_max_local_error_reset_streams",
                self.server.http2_max_local_error_reset_streams,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be more than 0"));
            }
        }
        if !(1..=300).contains(&self.server.handshake_timeout_secs) {
            problems.push("server.handshake_timeout_secs: must be 1 to 300".into());
        }
        if self.tls.enabled && self.tls.reload_secs == 0 {
            problems.push("tls.reload_secs: must be more than 0".into());
        }
        if self.tls.enabled {
            let generated = self.dev.generate_certs && !production;
            for (key, path) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
                match path {
                    None => problems.push(format!("{key}: required when tls.enabled = true")),
                    Some(p) if !p.is_file() && !generated => {
                        problems.push(format!("{key}: cannot read {}", p.display()))
                    }
                    _ => {}
                }
            }
            if let Some(ca) = &self.tls.client_ca
                && !ca.is_file()
            {
                problems.push(format!("tls.client_ca: cannot read {}", ca.display()));
            }
        } else if production {
            problems.push("tls.enabled: plaintext is refused in production".into());
        }
        if self.auth.issuer.is_empty() {
            problems.push("auth.issuer: required".into());
        }
        if self.auth.audience.is_empty() {
            problems.push("auth.audience: required".into());
        }
        match self.algorithms() {
            Ok(algs) if algs.is_empty() => {
                problems.push("auth.algorithms: at least one is required".into())
            }
            Ok(algs) => {
                let hs = algs.contains(&Algorithm::HS256);
                if hs && production {
                    problems.push("auth.algorithms: HS256 is refused in production".into());
                }
                if hs && self.auth.hs256_secret.is_none() {
                    problems
                        .push("auth.hs256_secret: required when auth.algorithms has HS256".into());
                }
            }
            Err(e) => problems.push(e),
        }
        if let Some(secret) = &self.auth.hs256_secret {
            if production {
                problems.push("auth.hs256_secret: refused in production".into());
            } else if secret.expose_secret().len() < 32 {
                problems.push("auth.hs256_secret: must be at least 32 bytes".into());
            }
        }
        let generated_keys = self.dev.generate_certs && !production;
        if self.auth.public_keys.is_empty()
            && self.auth.jwks_file.is_none()
            && self.auth.jwks_url.is_none()
            && self.auth.hs256_secret.is_none()
        {
            problems.push(
                "auth: no verification keys (set auth.public_keys, auth.jwks_file, auth.jwks_url or auth.hs256_secret)"
                    .into(),
            );
        }
        for (i, p) in self.auth.public_keys.iter().enumerate() {
            if !p.is_file() {
                problems.push(format!(
                    "auth.public_keys[{i}]: cannot read {}",
                    p.display()
                ));
            }
        }
        if let Some(p) = &self.auth.jwks_file
            && !p.is_file()
            && !generated_keys
        {
            problems.push(format!("auth.jwks_file: cannot read {}", p.display()));
        }
        match &self.auth.jwks_url {
            Some(u) => match url::Url::parse(u) {
                Ok(parsed) if parsed.scheme() == "https" && parsed.host().is_some() => {}
                Ok(_) => problems.push("auth.jwks_url: must be an https:// URL".into()),
                Err(e) => problems.push(format!("auth.jwks_url: not a URL ({e})")),
            },
            None if self.auth.jwks_ca.is_some() => {
                problems.push("auth.jwks_ca: set, but auth.jwks_url is not".into())
            }
            None => {}
        }
        if let Some(p) = &self.auth.jwks_ca
            && !p.is_file()
        {
            problems.push(format!("auth.jwks_ca: cannot read {}", p.display()));
        }
        if production && self.auth.jwks_min_refresh_secs == 0 {
            problems.push(
                "auth.jwks_min_refresh_secs: must be at least 1 in production (it rate-limits unknown-kid refreshes)"
                    .into(),
            );
        }
        if !(1..=60_000).contains(&self.auth.jwks_timeout_ms) {
            problems.push("auth.jwks_timeout_ms: must be 1 to 60000".into());
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.auth.jwks_max_bytes) {
            problems.push("auth.jwks_max_bytes: must be 1024 to 16777216".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level).is_err() {
            problems.push(format!(
                "telemetry.log_level: {:?} is not a log filter",
                self.telemetry.log_level
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push(format!(
                "telemetry.otlp_endpoint: {endpoint:?} is not an http:// or https:// URL"
            ));
        }
        if production && self.dev.generate_certs {
            problems.push("dev.generate_certs: refused in production".into());
        }
    }

    pub fn algorithms(&self) -> Result<Vec<Algorithm>, String> {
        self.auth
            .algorithms
            .iter()
            .map(|a| {
                let alg = Algorithm::from_str(a.trim())
                    .map_err(|_| format!("auth.algorithms: unknown algorithm {a:?}"))?;
                match alg {
                    Algorithm::ES256 | Algorithm::RS256 | Algorithm::EdDSA | Algorithm::HS256 => {
                        Ok(alg)
                    }
                    _ => Err(format!(
                        "auth.algorithms: {a} is not allowed (ES256, RS256, EdDSA, HS256)"
                    )),
                }
            })
            .collect()
    }

    pub fn server_addr(&self) -> SocketAddr {
        self.server.addr.parse().expect("validated")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr.parse().expect("validated")
    }

    /// The key sources the configuration names (building the HTTPS client
    /// of `auth.jwks_url`, which reads `auth.jwks_ca`).
    pub fn key_sources(&self) -> Result<Vec<KeySource>, KeyError> {
        let mut sources: Vec<KeySource> = self
            .auth
            .public_keys
            .iter()
            .cloned()
            .map(KeySource::PemFile)
            .collect();
        if let Some(p) = &self.auth.jwks_file {
            sources.push(KeySource::JwksFile(p.clone()));
        }
        if let Some(url) = &self.auth.jwks_url {
            sources.push(KeySource::JwksUrl(JwksUrl::new(
                url,
                self.auth.jwks_ca.as_deref(),
                std::time::Duration::from_millis(self.auth.jwks_timeout_ms),
                self.auth.jwks_max_bytes,
            )?));
        }
        if let Some(s) = &self.auth.hs256_secret {
            sources.push(KeySource::Hs256Secret(
                s.expose_secret().as_bytes().to_vec(),
            ));
        }
        Ok(sources)
    }

    /// How the verifier refreshes keys and caches verified tokens.
    pub fn verifier_options(&self) -> VerifierOptions {
        use std::time::Duration;
        VerifierOptions {
            refresh_interval: (self.auth.jwks_refresh_secs > 0)
                .then(|| Duration::from_secs(self.auth.jwks_refresh_secs)),
            min_refresh_interval: Duration::from_secs(self.auth.jwks_min_refresh_secs),
            cache_size: self.auth.token_cache_size,
        }
    }

    /// The token verifier these settings describe, with its keys loaded (a
    /// JWKS URL fetched: an unreachable one stops the start). Call
    /// [`Verifier::spawn_refresh`] to keep the keys fresh.
    pub async fn verifier(&self) -> anyhow::Result<Verifier> {
        let rules = TokenRules {
            issuer: self.auth.issuer.clone(),
            audience: self.auth.audience.clone(),
            algorithms: self.algorithms().map_err(anyhow::Error::msg)?,
            leeway_secs: self.auth.leeway_secs,
        };
        Ok(Verifier::from_sources(rules, self.key_sources()?, self.verifier_options()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service whose section type lets unknown keys through: the loader
    /// must refuse an unknown top-level section on its own.
    #[derive(Debug, Default, Deserialize, Serialize)]
    #[serde(default)]
    struct Things {
        things: std::collections::BTreeMap<String, String>,
    }

    impl ServiceSettings for Things {
        const SECTIONS: &'static [&'static str] = &["things"];
        fn validate(&self, _: &PlatformSettings, _: &mut Vec<String>) {}
    }

    fn read(toml: &str) -> Result<(PlatformSettings, Things), ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.toml"), toml).unwrap();
        read_layers::<Things>(
            "THINGS_TEST",
            &Sources {
                config_dir: Some(dir.path().into()),
                ..Default::default()
            },
            None,
        )
    }

    #[test]
    fn each_side_reads_its_own_sections() {
        let (platform, things) =
            read("[server]\nconcurrency_limit = 7\n[things]\ncolour = \"red\"\n").unwrap();
        assert_eq!(platform.server.concurrency_limit, 7);
        assert_eq!(things.things["colour"], "red");
    }

    #[test]
    fn an_unknown_section_is_refused_whatever_the_service_types_allow() {
        let err = read("[databse]\nurl = \"x\"\n").unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].starts_with("databse: unknown section"), "{err}");
        // Unknown keys inside a platform section are refused too.
        let err = read("[server]\nadress = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
    }
}
