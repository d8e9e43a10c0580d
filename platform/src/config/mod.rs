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

mod admin;
mod auth;
mod cors;
mod dev;
pub mod duration;
mod server;
mod shutdown;
mod tls;

pub use crate::telemetry::{LogFormat, TelemetrySettings};
pub use admin::AdminSettings;
pub use auth::AuthSettings;
pub use cors::CorsSettings;
pub use dev::DevSettings;
pub use server::ServerSettings;
pub use shutdown::ShutdownSettings;
pub use tls::TlsSettings;

use crate::auth::Verifier;
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
    pub cors: CorsSettings,
    pub telemetry: TelemetrySettings,
    pub shutdown: ShutdownSettings,
    pub dev: DevSettings,
}

/// The top-level sections [`PlatformSettings`] holds.
pub const PLATFORM_SECTIONS: [&str; 8] = [
    "server",
    "admin",
    "tls",
    "auth",
    "cors",
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
            cors: Default::default(),
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

/// A service with no sections of its own: its settings are the platform's.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoSections {}

impl ServiceSettings for NoSections {
    const SECTIONS: &'static [&'static str] = &[];

    fn validate(&self, _platform: &PlatformSettings, _problems: &mut Vec<String>) {}
}

/// Everything a service's server reads: the platform's sections (reached
/// through `Deref`, as `settings.server`) and the service's own (`service`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Settings<S> {
    #[serde(flatten)]
    pub platform: PlatformSettings,
    #[serde(flatten)]
    pub service: S,
}

impl<S> std::ops::Deref for Settings<S> {
    type Target = PlatformSettings;

    fn deref(&self) -> &PlatformSettings {
        &self.platform
    }
}

impl<S> std::ops::DerefMut for Settings<S> {
    fn deref_mut(&mut self) -> &mut PlatformSettings {
        &mut self.platform
    }
}

impl<S: ServiceSettings> Settings<S> {
    /// The built-in defaults, for `environment`.
    pub fn for_environment(environment: Environment) -> Self {
        Self {
            platform: PlatformSettings {
                environment,
                ..PlatformSettings::default()
            },
            service: S::default(),
        }
    }

    /// Reads every layer for the environment prefix `prefix`, then
    /// validates the result: every problem at once, each naming its key.
    pub fn load(prefix: &str, sources: &Sources) -> Result<Self, ConfigError> {
        let settings = Self::read(prefix, sources, None)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Reads every layer exactly as [`load`](Self::load) does (unknown keys
    /// refused), with the `{prefix}__*` variables taken from `vars` instead
    /// of this process, and does not validate: for checking a configuration
    /// meant for another machine (a Kubernetes manifest's, say) after
    /// pointing its file paths at local copies.
    pub fn read_with_vars(
        prefix: &str,
        sources: &Sources,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::read(prefix, sources, Some(vars.into_iter().collect()))
    }

    fn read(
        prefix: &str,
        sources: &Sources,
        vars: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let (platform, service) = read_layers::<S>(prefix, sources, vars)?;
        Ok(Self { platform, service })
    }

    /// Every problem of both sides, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.platform.validate(&mut problems);
        self.service.validate(&self.platform, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The effective configuration as TOML, secrets redacted
    /// (`check-config` prints it).
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
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
                .with_list_parse_key("auth.token_types")
                .with_list_parse_key("cors.allowed_origins")
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
    let (mut sections, service): (config::Map<String, Value>, config::Map<String, Value>) = merged
        .into_iter()
        .partition(|(key, _)| PLATFORM_SECTIONS.contains(&key.as_str()));
    // Section by section, so a value of the wrong type (an address that is
    // none, a negative number of seconds) is reported with its key, and the
    // other sections are still validated: the whole list comes out at once.
    let mut typed = Typed::default();
    let platform = PlatformSettings {
        environment,
        server: typed.section("server", &mut sections),
        admin: typed.section("admin", &mut sections),
        tls: typed.section("tls", &mut sections),
        auth: typed.section("auth", &mut sections),
        cors: typed.section("cors", &mut sections),
        telemetry: typed.section("telemetry", &mut sections),
        shutdown: typed.section("shutdown", &mut sections),
        dev: typed.section("dev", &mut sections),
    };
    let service: S = typed.service(service);
    if typed.problems.is_empty() {
        return Ok((platform, service));
    }
    // What did parse is checked too; problems of a section that did not
    // parse would be about its defaults, not the operator's values.
    let mut problems = typed.problems;
    let mut others = Vec::new();
    platform.validate(&mut others);
    service.validate(&platform, &mut others);
    problems.extend(others.into_iter().filter(|problem| {
        !typed.failed.iter().any(|section| {
            problem.starts_with(&format!("{section}."))
                || problem.starts_with(&format!("{section}:"))
        })
    }));
    Err(ConfigError(problems))
}

/// Sections typed one at a time: the problems of those that did not type,
/// each naming its key, and their names.
#[derive(Default)]
struct Typed {
    problems: Vec<String>,
    failed: Vec<String>,
}

impl Typed {
    /// The section `name` of `sections`, typed; its defaults when it is
    /// absent or does not type (the problem is recorded).
    fn section<T: DeserializeOwned + Default>(
        &mut self,
        name: &str,
        sections: &mut config::Map<String, config::Value>,
    ) -> T {
        let Some(value) = sections.remove(name) else {
            return T::default();
        };
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(typed) => typed,
            Err(e) => {
                self.record(name, &e);
                T::default()
            }
        }
    }

    /// The service's sections, typed together (their keys are named from
    /// the top).
    fn service<S: ServiceSettings>(&mut self, sections: config::Map<String, config::Value>) -> S {
        match serde_path_to_error::deserialize::<_, S>(config::Value::from(sections)) {
            Ok(typed) => typed,
            Err(e) => {
                let path = e.path().to_string();
                let section = path.split('.').next().unwrap_or_default().to_owned();
                self.problems.push(format!("{path}: {}", e.inner()));
                self.failed.push(section);
                S::default()
            }
        }
    }

    fn record(&mut self, section: &str, e: &serde_path_to_error::Error<config::ConfigError>) {
        let path = e.path().to_string();
        let key = if path == "." {
            section.to_owned()
        } else {
            format!("{section}.{path}")
        };
        self.problems.push(format!("{key}: {}", e.inner()));
        self.failed.push(section.to_owned());
    }
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
    /// Each section checks itself; what one section's rules need from
    /// another (the environment, whether development certificates are
    /// generated) is passed in.
    pub fn validate(&self, problems: &mut Vec<String>) {
        let production = self.environment == Environment::Production;
        let generated = self.dev.generate_certs && !production;
        self.server.validate(problems);
        self.admin.validate(problems);
        self.tls.validate(production, generated, problems);
        self.auth.validate(production, generated, problems);
        self.cors.validate(production, problems);
        self.telemetry.validate(problems);
        self.dev.validate(production, problems);
    }

    pub fn server_addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr
    }

    /// The token verifier the `auth` section describes (see
    /// [`AuthSettings::verifier`]).
    pub async fn verifier(&self) -> anyhow::Result<Verifier> {
        self.auth.verifier().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn durations_and_addresses_are_typed_under_their_keys() {
        let (platform, _) = read(
            "[server]\naddr = \"127.0.0.1:7\"\ndefault_timeout_ms = 250\nidle_timeout_secs = 0\n[shutdown]\ndrain_secs = 3\n",
        )
        .unwrap();
        assert_eq!(platform.server.addr, SocketAddr::from(([127, 0, 0, 1], 7)));
        assert_eq!(platform.server.default_timeout, Duration::from_millis(250));
        assert_eq!(platform.server.idle_timeout, None, "0 means never");
        assert_eq!(platform.shutdown.drain, Duration::from_secs(3));
        // Printed back under the same keys, in the same units.
        let printed = serde_json::to_value(&platform).unwrap();
        assert_eq!(printed["server"]["addr"], "127.0.0.1:7");
        assert_eq!(printed["server"]["default_timeout_ms"], 250);
        assert_eq!(printed["server"]["idle_timeout_secs"], 0);
        assert_eq!(printed["shutdown"]["drain_secs"], 3);
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_and_other_sections_are_still_checked() {
        let err = read(
            "[server]\naddr = \"nowhere\"\n[admin]\ncheck_interval_ms = -5\n[auth]\nissuer = \"\"\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("server.addr: "), "{text}");
        assert!(text.contains("admin.check_interval_ms: "), "{text}");
        // The auth section typed: its problems are reported in the same list.
        assert!(text.contains("auth.issuer: required"), "{text}");
        // Nothing is said about the defaults standing in for what did not type.
        assert!(
            !err.0
                .iter()
                .any(|p| p.starts_with("admin.check_timeout_ms")),
            "{text}"
        );
    }

    #[test]
    fn list_keys_take_comma_separated_environment_values() {
        let dir = tempfile::tempdir().unwrap();
        let vars = [
            ("THINGS_TEST__AUTH__TOKEN_TYPES", "JWT,application/at+jwt"),
            ("THINGS_TEST__AUTH__ALGORITHMS", "ES256,EdDSA"),
            (
                "THINGS_TEST__CORS__ALLOWED_ORIGINS",
                "https://shop.example,http://localhost:8000",
            ),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let (platform, _) = read_layers::<Things>(
            "THINGS_TEST",
            &Sources {
                config_dir: Some(dir.path().into()),
                ..Default::default()
            },
            Some(vars.into_iter().collect()),
        )
        .unwrap();
        assert_eq!(platform.auth.token_types, ["JWT", "application/at+jwt"]);
        assert_eq!(platform.auth.algorithms, ["ES256", "EdDSA"]);
        assert_eq!(
            platform.cors.allowed_origins,
            ["https://shop.example", "http://localhost:8000"]
        );
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
