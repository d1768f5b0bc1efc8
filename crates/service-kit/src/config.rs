//! Layered configuration, one pattern for every service: defaults in code, then an optional
//! TOML file (`--config` or `KILN_CONFIG`), then `KILN_<SECTION>__<KEY>` environment
//! variables. Invalid settings stop start-up with a message naming the setting.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::auth::Role;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] ::config::ConfigError),
    #[error("invalid setting {setting}: {message}")]
    Invalid { setting: String, message: String },
}

impl ConfigError {
    pub fn invalid(setting: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            setting: setting.to_owned(),
            message: message.into(),
        }
    }
}

/// Settings every service shares. Service configs embed it with `#[serde(flatten)]`.
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    #[serde(default)]
    pub redis: RedisSettings,
    #[serde(default)]
    pub storage: StorageSettings,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub secrets: SecretsSettings,
}

/// `secrets.key`: when the api and the workers share one, secret values are sealed at rest
/// (`kiln_store::SealKey`). Other services never read secret values and ignore it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SecretsSettings {
    pub key: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    /// `redis://`, `rediss://` (TLS) or `unix://`.
    pub url: String,
    /// The most connections a pool may hold. Operations running at the same time share
    /// one (see `kiln_store::Store`), so a pool normally holds one.
    pub pool_size: usize,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            pool_size: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StorageSettings {
    /// Root of the shared file storage (`<root>/jobs/<folder>/.../<job>/<build>/`).
    pub root: PathBuf,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            root: PathBuf::from("var/storage"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    /// `host:port`; port 0 picks a free one (tests).
    pub bind: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            max_body_bytes: 256 * 1024,
        }
    }
}

impl HttpSettings {
    pub fn addr(&self) -> Result<SocketAddr, ConfigError> {
        self.bind.parse().map_err(|_| {
            ConfigError::invalid("http.bind", format!("{:?} is not host:port", self.bind))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    #[default]
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `kiln_worker=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenSettings {
    pub name: String,
    pub role: Role,
    pub token: Secret,
    /// A `write` token given folders may change only what is inside one of them, at any
    /// depth (jobs, their builds, subfolders): one team's CI token cannot touch another's
    /// jobs. Empty: everything.
    #[serde(default)]
    pub folders: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// Turns auth off, for a laptop only. Without it, no token configured is an error.
    pub disabled: bool,
    #[serde(deserialize_with = "tokens")]
    pub tokens: Vec<TokenSettings>,
}

/// Tokens come as TOML tables, or from the environment as `name:role:token,...`
/// (`KILN_AUTH__TOKENS=ci:write:s3cret`), a write token limited to folders as
/// `name:write@folder+folder:token`.
fn tokens<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TokenSettings>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<TokenSettings>),
        Text(String),
    }
    match Either::deserialize(d)? {
        Either::List(l) => Ok(l),
        Either::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| {
                let mut parts = entry.splitn(3, ':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(name), Some(role), Some(token)) => {
                        let (role, folders) = match role.split_once('@') {
                            Some((role, folders)) => {
                                (role, folders.split('+').map(str::to_owned).collect())
                            }
                            None => (role, Vec::new()),
                        };
                        Ok(TokenSettings {
                            name: name.to_owned(),
                            role: role.parse().map_err(serde::de::Error::custom)?,
                            token: Secret::new(token),
                            folders,
                        })
                    }
                    _ => Err(serde::de::Error::custom(
                        "auth.tokens from the environment must be name:role:token,...",
                    )),
                }
            })
            .collect(),
    }
}

impl Common {
    /// The key secret values are sealed with, if one is set; a malformed one is refused by
    /// name.
    pub fn seal_key(&self) -> Result<Option<kiln_store::SealKey>, ConfigError> {
        self.secrets
            .key
            .as_ref()
            .map(|k| kiln_store::SealKey::from_hex(k.expose()))
            .transpose()
            .map_err(|e| ConfigError::invalid("secrets.key", e.to_string()))
    }

    /// Cross-field checks shared by every service.
    pub fn validate(&self, needs_tokens: bool) -> Result<(), ConfigError> {
        self.http.addr()?;
        let u = &self.redis.url;
        let schemes = [
            "redis://",
            "rediss://",
            "unix://",
            "redis-sentinel://",
            "rediss-sentinel://",
        ];
        if !schemes.iter().any(|s| u.starts_with(s)) {
            return Err(ConfigError::invalid(
                "redis.url",
                "must start with redis://, rediss://, unix://, redis-sentinel:// or rediss-sentinel://",
            ));
        }
        if self.redis.pool_size == 0 {
            return Err(ConfigError::invalid(
                "redis.pool_size",
                "must be at least 1",
            ));
        }
        if self.storage.root.as_os_str().is_empty() {
            return Err(ConfigError::invalid("storage.root", "must not be empty"));
        }
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be at least 1024",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.name.trim().is_empty() || !names.insert(&t.name) {
                return Err(ConfigError::invalid(
                    &format!("auth.tokens[{i}].name"),
                    "must be non-empty and unique",
                ));
            }
            if t.token.expose().len() < 16 {
                return Err(ConfigError::invalid(
                    &format!("auth.tokens[{i}].token"),
                    "must be at least 16 characters",
                ));
            }
            if !t.folders.is_empty() && t.role != Role::Write {
                return Err(ConfigError::invalid(
                    &format!("auth.tokens[{i}].folders"),
                    "only a write token may be limited to folders (reads are not limited, and an admin's work is not in folders)",
                ));
            }
            if let Some(f) = t
                .folders
                .iter()
                .find(|f| kiln_model::Name::parse(f).is_err())
            {
                return Err(ConfigError::invalid(
                    &format!("auth.tokens[{i}].folders"),
                    format!("{f:?} is not a folder name ([A-Za-z0-9][A-Za-z0-9.-]{{0,62}})"),
                ));
            }
        }
        if needs_tokens && !self.auth.disabled && self.auth.tokens.is_empty() {
            return Err(ConfigError::invalid(
                "auth.tokens",
                "no API token is configured; add [[auth.tokens]] or set auth.disabled = true for local use",
            ));
        }
        self.seal_key()?;
        Ok(())
    }
}

/// Loads a service's configuration: `defaults`, then the TOML file at `path` (or
/// `KILN_CONFIG`), then `KILN_*` environment variables.
pub fn load<T: DeserializeOwned>(path: Option<&Path>) -> Result<T, ConfigError> {
    let mut b = ::config::Config::builder();
    let from_env = std::env::var_os("KILN_CONFIG").map(PathBuf::from);
    if let Some(p) = path.map(Path::to_path_buf).or(from_env) {
        b = b.add_source(::config::File::from(p).required(true));
    }
    b = b.add_source(
        ::config::Environment::with_prefix("KILN")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true),
    );
    // Through serde_path_to_error so that a wrong value names its setting
    // (`http.max_body_bytes: invalid type: string "abc", expected usize`). Services flatten
    // `Common` into their settings and serde cannot follow a path into a flattened struct,
    // so a failure without a path is located by reading `Common` alone.
    let built = b.build()?;
    serde_path_to_error::deserialize(built.clone()).map_err(|e| {
        let failed = |e: serde_path_to_error::Error<::config::ConfigError>| {
            let setting = e.path().to_string();
            (setting != ".").then(|| ConfigError::invalid(&setting, e.into_inner().to_string()))
        };
        let unplaced = e.inner().to_string();
        failed(e)
            .or_else(|| {
                serde_path_to_error::deserialize::<_, Common>(built)
                    .err()
                    .and_then(failed)
            })
            .unwrap_or_else(|| ConfigError::Load(::config::ConfigError::Message(unplaced)))
    })
}

/// The `--config <file>` argument every service binary takes, read without a parser crate
/// so that `main` stays ten lines.
pub fn config_path_from_args() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(p) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return Some(PathBuf::from(p));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(toml: &str) -> Common {
        ::config::Config::builder()
            .add_source(::config::File::from_str(toml, ::config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn no_token_is_a_start_up_error_unless_auth_is_disabled() {
        let c = common("");
        let e = c.validate(true).unwrap_err().to_string();
        assert!(e.contains("auth.tokens"), "{e}");
        let c = common("[auth]\ndisabled = true");
        c.validate(true).unwrap();
    }

    #[test]
    fn a_malformed_secrets_key_is_refused_by_name_and_never_printed() {
        let c = common("[auth]\ndisabled = true\n[secrets]\nkey = \"not-hex\"");
        let e = c.validate(false).unwrap_err().to_string();
        assert!(
            e.contains("secrets.key") && e.contains("64 hexadecimal digits"),
            "{e}"
        );
        assert!(!format!("{c:?}").contains("not-hex"));
        let c = common(&format!(
            "[auth]\ndisabled = true\n[secrets]\nkey = \"{}\"",
            "ab".repeat(32)
        ));
        assert!(c.seal_key().unwrap().is_some());
    }

    #[test]
    fn tokens_are_read_from_toml_and_never_printed() {
        let c = common(
            "[[auth.tokens]]\nname = \"ci\"\nrole = \"write\"\ntoken = \"0123456789abcdef\"",
        );
        c.validate(true).unwrap();
        assert_eq!(c.auth.tokens[0].role, Role::Write);
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn a_write_token_may_be_limited_to_folders_as_the_environment_says() {
        let c = common(
            "[auth]\ntokens = \"team:write@team-a+team-b:0123456789abcdef,ci:write:fedcba9876543210\"",
        );
        c.validate(true).unwrap();
        assert_eq!(c.auth.tokens[0].folders, ["team-a", "team-b"]);
        assert!(c.auth.tokens[1].folders.is_empty());
        for (tokens, why) in [
            ("viewer:read@team-a:0123456789abcdef", "only a write token"),
            ("team:write@no/such:0123456789abcdef", "not a folder name"),
        ] {
            let e = common(&format!("[auth]\ntokens = \"{tokens}\""))
                .validate(true)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("auth.tokens[0].folders") && e.contains(why),
                "{e}"
            );
        }
    }

    /// A service's settings, shaped like every Kiln service's: `Common` flattened in.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Service {
        #[serde(flatten)]
        common: Common,
        #[serde(default)]
        svc: Svc,
    }

    #[derive(Debug, Default, Deserialize)]
    #[allow(dead_code)]
    struct Svc {
        #[serde(default)]
        workers: u32,
    }

    fn load_toml(name: &str, toml: &str) -> Result<Service, ConfigError> {
        let path =
            std::env::temp_dir().join(format!("kiln-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, toml).unwrap();
        let loaded = load(Some(&path));
        let _ = std::fs::remove_file(&path);
        loaded
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_setting_even_in_the_shared_settings() {
        let e = load_toml("common", "[http]\nmax_body_bytes = \"abc\"").unwrap_err();
        assert!(e.to_string().contains("http.max_body_bytes"), "{e}");
        let e = load_toml("own", "[svc]\nworkers = \"z\"").unwrap_err();
        assert!(e.to_string().contains("svc.workers"), "{e}");
        assert!(load_toml("good", "[svc]\nworkers = 2").is_ok());
    }

    #[test]
    fn bad_settings_are_named() {
        let e = common("[http]\nbind = \"nope\"")
            .validate(false)
            .unwrap_err();
        assert!(e.to_string().contains("http.bind"));
        let e = common("[redis]\nurl = \"http://x\"")
            .validate(false)
            .unwrap_err();
        assert!(e.to_string().contains("redis.url"));
    }
}
