//! Configuration: embedded defaults -> TOML file -> `INLET_<SECTION>__<KEY>`
//! environment overrides -> `env:NAME` secrets -> validation.
//!
//! Everything is deserialized with `deny_unknown_fields` through
//! `serde_path_to_error`, so a mistake is reported with its path in the file
//! (`sources[0].actions[1].url`), and semantic checks collect every problem
//! rather than stopping at the first.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The whole configuration, as read from TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub workers: WorkersConfig,
    #[serde(default)]
    pub classifier: ClassifierConfig,
    #[serde(default)]
    pub conversations: ConversationsConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP server binds (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// The URL providers use to reach us; Twilio signs it. Default `http://<listen>`.
    pub public_url: Option<String>,
    /// Request bodies above this are answered 413 without being read further.
    pub max_body_bytes: usize,
    /// Bearer token of the `/v1` admin API; a random one is printed when unset.
    pub admin_token: Option<Secret>,
    /// How long SIGTERM waits for running jobs before exiting anyway.
    pub shutdown_grace: Dur,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            max_body_bytes: 1024 * 1024,
            admin_token: None,
            shutdown_grace: Dur(Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://relative/path.db`, `sqlite:///absolute/path.db` or `postgres://...`.
    pub url: String,
    /// How long a dedup key is remembered.
    pub dedup_window: Dur,
    /// How long messages, events, attempts and rejections are kept.
    pub retention: Dur,
    /// How long a SQLite write may wait for a locked database before it fails
    /// (journal records are then retried; ingest never waits on SQLite).
    pub busy_timeout: Dur,
    /// The rejections log keeps at most this many entries.
    pub max_rejections: u64,
    /// Messages acknowledged (in the journal) but not yet stored in SQLite,
    /// at most; past it, ingest answers 503 until SQLite catches up.
    pub max_backlog: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://inlet-data/inlet.db".into(),
            dedup_window: Dur(Duration::from_secs(7 * 86400)),
            retention: Dur(Duration::from_secs(30 * 86400)),
            busy_timeout: Dur(Duration::from_secs(5)),
            max_rejections: 10_000,
            max_backlog: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Jobs run at once.
    pub concurrency: usize,
    /// Attempts per job, the first included, before it is dead.
    pub max_attempts: u32,
    pub backoff_base: Dur,
    pub backoff_max: Dur,
    /// Consecutive failures that open a destination's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before letting one trial through.
    pub breaker_cooldown: Dur,
    /// A claimed job not finished by then is run again.
    pub lease: Dur,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            max_attempts: 10,
            backoff_base: Dur(Duration::from_secs(1)),
            backoff_max: Dur(Duration::from_secs(3600)),
            breaker_failures: 10,
            breaker_cooldown: Dur(Duration::from_secs(60)),
            lease: Dur(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Extra rules, tried in order before the built-in ones.
    pub rules: Vec<RuleConfig>,
    pub llm: Option<LlmConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub pattern: String,
    pub intent: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub model: String,
    #[serde(default = "default_llm_labels")]
    pub labels: Vec<String>,
    #[serde(default = "default_llm_timeout")]
    pub timeout: Dur,
}

fn default_llm_labels() -> Vec<String> {
    ["affirmative", "negative", "question", "complaint", "other"]
        .map(String::from)
        .to_vec()
}

fn default_llm_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationsConfig {
    pub session_ttl: Dur,
}

impl Default for ConversationsConfig {
    fn default() -> Self {
        Self {
            session_ttl: Dur(Duration::from_secs(30 * 60)),
        }
    }
}

/// The providers Inlet can ingest from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    SmsGateway,
    AndroidSmsGateway,
    Twilio,
    WhatsappCloud,
    Evolution,
    Respondio,
    StandardWebhooks,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SmsGateway => "sms-gateway",
            Self::AndroidSmsGateway => "android-sms-gateway",
            Self::Twilio => "twilio",
            Self::WhatsappCloud => "whatsapp-cloud",
            Self::Evolution => "evolution",
            Self::Respondio => "respondio",
            Self::StandardWebhooks => "standard-webhooks",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    #[default]
    Reject,
    Accept,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The path segment: `POST /hooks/{name}`.
    pub name: String,
    pub provider: ProviderKind,
    /// Auth token / app secret / apikey / signing key / `whsec_` secret.
    pub secret: Option<Secret>,
    #[serde(default)]
    pub on_invalid: OnInvalid,
    /// whatsapp-cloud: the GET handshake token.
    pub verify_token: Option<Secret>,
    /// standard-webhooks: JSON pointer to the text.
    pub text_pointer: Option<String>,
    /// standard-webhooks: JSON pointer to the sender.
    pub from_pointer: Option<String>,
    /// sms-gateway: how the generic HMAC of the raw body is carried.
    pub signature: Option<SignatureConfig>,
    #[serde(default)]
    pub actions: Vec<ActionConfig>,
}

/// A generic HMAC of the raw body, carried in one header.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignatureConfig {
    pub header: String,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    pub prefix: String,
}

impl Default for SignatureConfig {
    fn default() -> Self {
        Self {
            header: "X-Signature".into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: SignatureEncoding::Hex,
            prefix: "sha256=".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// One background action of a source. Kept as a loosely typed table here
/// (type-specific keys are checked in [`validate`]) so that later action
/// types need no change to this module's shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    #[serde(rename = "type")]
    pub kind: ActionKind,
    pub name: Option<String>,
    pub url: Option<String>,
    pub secret: Option<Secret>,
    pub timeout: Option<Dur>,
    pub via: Option<String>,
    #[serde(default)]
    pub templates: std::collections::BTreeMap<String, String>,
    pub base_url: Option<String>,
    pub account_sid: Option<String>,
    pub auth_token: Option<Secret>,
    pub from: Option<String>,
    pub api_version: Option<String>,
    pub phone_number_id: Option<String>,
    pub token: Option<Secret>,
    pub instance: Option<String>,
    pub api_key: Option<Secret>,
    /// Opt in to HTTP/2 for this destination (HTTP/1.1 otherwise).
    #[serde(default)]
    pub http2: bool,
    /// Calls in flight at once to this action's destination
    /// (`scheme://host:port`); default 8. Actions sharing a destination
    /// share one limit, set by the first to call it.
    pub max_in_flight: Option<usize>,
}

impl ActionConfig {
    /// `max_in_flight` with its default.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
            .unwrap_or(crate::pipeline::outbound::DEFAULT_MAX_IN_FLIGHT)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Forward,
    Reply,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Reply => "reply",
        }
    }
}

impl SourceConfig {
    /// Action names as SPEC §4 defines them: `name`, else the type, with
    /// `#N` (1-based position) on a later action of a type already used in
    /// this source: `forward`, `reply`, `forward#3`.
    pub fn action_names(&self) -> Vec<String> {
        self.actions
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if let Some(n) = &a.name {
                    return n.clone();
                }
                let repeat = self.actions[..i].iter().any(|b| b.kind == a.kind);
                if repeat {
                    format!("{}#{}", a.kind.as_str(), i + 1)
                } else {
                    a.kind.as_str().to_string()
                }
            })
            .collect()
    }
}

/// A secret value whose `Debug` never shows it. `env:NAME` is resolved at load.
#[derive(Clone, PartialEq, Eq, Deserialize)]
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
        f.write_str("[redacted]")
    }
}

/// A duration written as `"600ms"`, `"5s"`, `"30m"`, `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// One problem found in a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration{}", problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

/// The embedded defaults: one unsigned `sms` source of provider `sms-gateway`.
pub const EMBEDDED_DEFAULTS: &str = r#"
[[sources]]
name = "sms"
provider = "sms-gateway"
"#;

impl Config {
    /// Load from `path` (or the embedded defaults), applying environment
    /// overrides from `env` and resolving `env:` secrets.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError::one("", format!("cannot read {}: {e}", p.display())))?,
            None => EMBEDDED_DEFAULTS.to_string(),
        };
        Self::from_toml(&text, &env)
    }

    /// Parse TOML text with the given environment (a list so tests need not
    /// touch the process environment).
    pub fn from_toml(text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::one("", e.to_string()))?;
        apply_env_overrides(&mut table, env)?;
        let de = toml::Value::Table(table);
        let mut config: Config = serde_path_to_error::deserialize(de)
            .map_err(|e| ConfigError::one(e.path().to_string(), e.inner().to_string()))?;
        let mut problems = Vec::new();
        config.resolve_secrets(env, &mut problems);
        config.validate(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The socket address to bind.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server
            .listen
            .parse()
            .map_err(|e| ConfigError::one("server.listen", format!("{e}")))
    }

    /// Where SQLite keeps its file, if the store is SQLite.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        sqlite_path(&self.store.url)
    }

    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name)
    }

    fn resolve_secrets(&mut self, env: &[(String, String)], problems: &mut Vec<Problem>) {
        let mut resolve = |path: String, s: &mut Option<Secret>| {
            if let Some(secret) = s
                && let Some(name) = secret.0.strip_prefix("env:")
            {
                match env.iter().find(|(k, _)| k == name) {
                    Some((_, v)) => secret.0 = v.clone(),
                    None => problems.push(Problem {
                        path,
                        message: format!("environment variable {name} is not set"),
                    }),
                }
            }
        };
        resolve("server.admin_token".into(), &mut self.server.admin_token);
        if let Some(llm) = &mut self.classifier.llm {
            resolve("classifier.llm.api_key".into(), &mut llm.api_key);
        }
        for (i, s) in self.sources.iter_mut().enumerate() {
            resolve(format!("sources[{i}].secret"), &mut s.secret);
            resolve(format!("sources[{i}].verify_token"), &mut s.verify_token);
            for (j, a) in s.actions.iter_mut().enumerate() {
                let p = format!("sources[{i}].actions[{j}]");
                resolve(format!("{p}.secret"), &mut a.secret);
                resolve(format!("{p}.auth_token"), &mut a.auth_token);
                resolve(format!("{p}.token"), &mut a.token);
                resolve(format!("{p}.api_key"), &mut a.api_key);
            }
        }
    }

    fn validate(&self, problems: &mut Vec<Problem>) {
        let mut push = |path: String, message: String| problems.push(Problem { path, message });
        if let Err(e) = self.server.listen.parse::<SocketAddr>() {
            push("server.listen".into(), format!("not a socket address: {e}"));
        }
        if let Some(u) = &self.server.public_url
            && url::Url::parse(u).is_err()
        {
            push("server.public_url".into(), format!("not a URL: {u:?}"));
        }
        if self.server.max_body_bytes == 0 {
            push("server.max_body_bytes".into(), "must be positive".into());
        }
        if sqlite_path(&self.store.url).is_none() && !self.store.url.starts_with("postgres") {
            push(
                "store.url".into(),
                "must start with sqlite:// or postgres://".into(),
            );
        }
        if self.store.url.starts_with("postgres") {
            push(
                "store.url".into(),
                "the PostgreSQL store is not built yet; use sqlite://".into(),
            );
        }
        if self.workers.concurrency == 0 {
            push("workers.concurrency".into(), "must be at least 1".into());
        }
        if self.workers.max_attempts == 0 {
            push("workers.max_attempts".into(), "must be at least 1".into());
        }
        if self.workers.backoff_base.0 > self.workers.backoff_max.0 {
            push(
                "workers.backoff_base".into(),
                "must not exceed workers.backoff_max".into(),
            );
        }
        for (i, r) in self.classifier.rules.iter().enumerate() {
            if let Err(e) = regex::Regex::new(&r.pattern) {
                push(format!("classifier.rules[{i}].pattern"), e.to_string());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let p = format!("sources[{i}]");
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                push(
                    format!("{p}.name"),
                    "must be non-empty and use only letters, digits, '-', '_' and '.'".into(),
                );
            }
            if !seen.insert(s.name.as_str()) {
                push(
                    format!("{p}.name"),
                    format!("duplicate source {:?}", s.name),
                );
            }
            let only = |key: &str, allowed: &[ProviderKind], set: bool| -> Option<Problem> {
                (set && !allowed.contains(&s.provider)).then(|| Problem {
                    path: format!("{p}.{key}"),
                    message: format!("not a key of provider {}", s.provider.as_str()),
                })
            };
            use ProviderKind::*;
            problems_extend(
                &mut push,
                [
                    only("verify_token", &[WhatsappCloud], s.verify_token.is_some()),
                    only(
                        "text_pointer",
                        &[StandardWebhooks],
                        s.text_pointer.is_some(),
                    ),
                    only(
                        "from_pointer",
                        &[StandardWebhooks],
                        s.from_pointer.is_some(),
                    ),
                    only("signature", &[SmsGateway], s.signature.is_some()),
                ],
            );
            if s.provider == StandardWebhooks
                && let Some(secret) = &s.secret
                && let Err(e) =
                    crate::providers::standard_webhooks::SigningKey::parse(secret.expose())
            {
                push(format!("{p}.secret"), e);
            }
            for (key, pointer) in [
                ("text_pointer", &s.text_pointer),
                ("from_pointer", &s.from_pointer),
            ] {
                if let Some(ptr) = pointer
                    && !ptr.is_empty()
                    && !ptr.starts_with('/')
                {
                    push(
                        format!("{p}.{key}"),
                        format!("a JSON pointer starts with '/': {ptr:?}"),
                    );
                }
            }
            let names = s.action_names();
            for (j, a) in s.actions.iter().enumerate() {
                let ap = format!("{p}.actions[{j}]");
                if names.iter().filter(|n| **n == names[j]).count() > 1 {
                    push(
                        format!("{ap}.name"),
                        format!("duplicate action name {:?}", names[j]),
                    );
                }
                if a.max_in_flight == Some(0) {
                    push(format!("{ap}.max_in_flight"), "must be at least 1".into());
                }
                match a.kind {
                    ActionKind::Forward => {
                        match &a.url {
                            None => push(format!("{ap}.url"), "required for forward".into()),
                            Some(u) if url::Url::parse(u).is_err() => {
                                push(format!("{ap}.url"), format!("not a URL: {u:?}"))
                            }
                            _ => {}
                        }
                        if let Some(secret) = &a.secret
                            && let Err(e) = crate::providers::standard_webhooks::SigningKey::parse(
                                secret.expose(),
                            )
                        {
                            push(format!("{ap}.secret"), e);
                        }
                    }
                    ActionKind::Reply => {
                        if let Err(problems) = crate::pipeline::reply::Sender::from_config(a) {
                            for (key, message) in problems {
                                push(format!("{ap}.{key}"), message);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn problems_extend(push: &mut impl FnMut(String, String), items: [Option<Problem>; 4]) {
    for p in items.into_iter().flatten() {
        push(p.path, p.message);
    }
}

/// `sqlite://rel/path.db` -> `rel/path.db`; `sqlite:///abs/path.db` -> `/abs/path.db`.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    url.strip_prefix("sqlite://")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Apply `INLET_<SECTION>__<KEY>` (and deeper, `__`-separated) overrides.
/// Values are read as TOML scalars where they parse as one (numbers,
/// booleans), else as strings; arrays of tables (`sources`) are not reached.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Result<(), ConfigError> {
    for (key, value) in env {
        let Some(rest) = key.strip_prefix("INLET_") else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(|p| p.is_empty()) || parts[0] == "sources" {
            return Err(ConfigError::one(
                key.clone(),
                "environment overrides reach scalar keys of tables only".to_string(),
            ));
        }
        let mut cur = &mut *table;
        for part in &parts[..parts.len() - 1] {
            let entry = cur
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = entry
                .as_table_mut()
                .ok_or_else(|| ConfigError::one(key.clone(), format!("{part} is not a table")))?;
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table() && !v.is_array())
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        cur.insert(parts[parts.len() - 1].clone(), parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_defaults_give_one_unsigned_sms_source() {
        let c = Config::from_toml(EMBEDDED_DEFAULTS, &[]).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(
            c.sqlite_path().unwrap(),
            PathBuf::from("inlet-data/inlet.db")
        );
        assert_eq!(c.sources.len(), 1);
        assert_eq!(c.sources[0].name, "sms");
        assert_eq!(c.sources[0].provider, ProviderKind::SmsGateway);
        assert!(c.sources[0].secret.is_none());
    }

    #[test]
    fn env_overrides_reach_scalars_with_types() {
        let c = Config::from_toml(
            EMBEDDED_DEFAULTS,
            &env(&[
                ("INLET_SERVER__LISTEN", "127.0.0.1:9999"),
                ("INLET_WORKERS__CONCURRENCY", "3"),
                ("INLET_STORE__DEDUP_WINDOW", "1h"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9999");
        assert_eq!(c.workers.concurrency, 3);
        assert_eq!(c.store.dedup_window.0, Duration::from_secs(3600));
    }

    #[test]
    fn unknown_key_is_reported_with_its_path() {
        let err = Config::from_toml(
            "[[sources]]\nname='a'\nprovider='twilio'\n[[sources.actions]]\ntype='forward'\nurl='http://x'\nbogus=1\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.problems[0].path, "sources[0].actions[0].bogus");
        assert!(err.problems[0].message.contains("bogus"), "{err}");
    }

    #[test]
    fn env_secret_resolves_and_unset_one_is_a_problem() {
        let text = "[[sources]]\nname='a'\nprovider='twilio'\nsecret='env:TOK'\n";
        let c = Config::from_toml(text, &env(&[("TOK", "s3cret")])).unwrap();
        assert_eq!(c.sources[0].secret.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(format!("{:?}", c.sources[0].secret), "Some([redacted])");
        let err = Config::from_toml(text, &[]).unwrap_err();
        assert_eq!(err.problems[0].path, "sources[0].secret");
    }

    #[test]
    fn every_semantic_problem_is_reported() {
        let text = "[server]\nlisten='nope'\n[workers]\nconcurrency=0\n[[sources]]\nname='a'\nprovider='twilio'\nverify_token='x'\n[[sources]]\nname='a'\nprovider='sms-gateway'\n";
        let err = Config::from_toml(text, &[]).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.listen",
                "workers.concurrency",
                "sources[0].verify_token",
                "sources[1].name"
            ]
        );
    }

    #[test]
    fn undecodable_whsec_secret_and_relative_pointer_are_problems() {
        let text = "[[sources]]\nname='a'\nprovider='standard-webhooks'\nsecret='whsec_!!!'\ntext_pointer='data/text'\n";
        let err = Config::from_toml(text, &[]).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["sources[0].secret", "sources[0].text_pointer"]);
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err = Config::from_toml("[workers]\nlease='soon'\n", &[]).unwrap_err();
        assert_eq!(err.problems[0].path, "workers.lease");
    }

    #[test]
    fn action_names_number_repeated_types() {
        let text = "[[sources]]\nname='a'\nprovider='twilio'\n[[sources.actions]]\ntype='forward'\nurl='http://x'\n[[sources.actions]]\ntype='reply'\nvia='twilio'\naccount_sid='AC1'\nauth_token='t'\n[[sources.actions]]\ntype='forward'\nurl='http://y'\n[[sources.actions]]\ntype='forward'\nname='app'\nurl='http://z'\n";
        let c = Config::from_toml(text, &[]).unwrap();
        assert_eq!(
            c.sources[0].action_names(),
            ["forward", "reply", "forward#3", "app"]
        );
    }

    #[test]
    fn reply_senders_need_their_keys() {
        let text = "[[sources]]\nname='a'\nprovider='twilio'\n\
            [[sources.actions]]\ntype='forward'\nurl='http://x'\nsecret='whsec_!!'\n\
            [[sources.actions]]\ntype='reply'\nvia='twilio'\nauth_token='t'\n\
            [[sources.actions]]\ntype='reply'\nvia='whatsapp-cloud'\n\
            [[sources.actions]]\ntype='reply'\nvia='evolution'\nbase_url='http://e'\n\
            [[sources.actions]]\ntype='reply'\nvia='sms-gateway'\nmax_in_flight=0\n\
            [[sources.actions]]\ntype='reply'\nvia='pigeon'\n";
        let err = Config::from_toml(text, &[]).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "sources[0].actions[0].secret",
                "sources[0].actions[1].account_sid",
                "sources[0].actions[2].phone_number_id",
                "sources[0].actions[2].token",
                "sources[0].actions[3].instance",
                "sources[0].actions[3].api_key",
                "sources[0].actions[4].max_in_flight",
                "sources[0].actions[4].url",
                "sources[0].actions[5].via",
            ],
            "{err}"
        );
    }
}
