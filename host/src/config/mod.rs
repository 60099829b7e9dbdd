//! `runtime.toml`: what runs, where its routes are and what it may reach.
//!
//! The file is parsed into these structs once, validated as a whole (so that
//! every mistake is reported before the port is bound), and shared as
//! `Arc<Config>`. Relative paths are resolved against the file's directory.

mod cluster;
mod gateway;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use cluster::{Cluster, Node};
pub use gateway::{Auth, RateLimit};

/// Whether the path prefix `prefix` covers `path` by whole segments:
/// `/cars` covers `/cars` and `/cars/7`, not `/carsx`; `/` covers all.
pub fn covers(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'))
}

/// Errors in the configuration, each telling what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    /// The components to load, by name. The name is also the name of the
    /// component's database file and of the source of its events.
    pub components: BTreeMap<String, ComponentConfig>,
    /// Synchronous calls a component may make into another one.
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub bus: Bus,
    #[serde(default)]
    pub auth: Auth,
    /// Per-caller limits on how often routes may be called.
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    /// Which node runs which component; none: this process runs all.
    #[serde(default)]
    pub nodes: BTreeMap<String, Node>,
    #[serde(default)]
    pub cluster: Cluster,
    /// The node this process is (`serve --node`), if there are nodes.
    #[serde(skip)]
    pub this_node: Option<String>,
}

/// Where events travel between components: the embedded log in the data
/// directory (the default), or a Kafka cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bus {
    pub kind: BusKind,
    /// Kafka's bootstrap servers, `host:port[,host:port...]`.
    pub brokers: Option<String>,
    /// Put before every topic name on the broker (and consumer group).
    pub topic_prefix: String,
    /// Partitions of each topic the host creates: events go to the
    /// partition of their key, so that one key's events keep their order.
    /// A topic keeps the partitions it was created with.
    pub partitions: u32,
    /// Passed through to librdkafka (e.g. `security.protocol`).
    pub client: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    #[default]
    Embedded,
    Kafka,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            kind: BusKind::Embedded,
            brokers: None,
            topic_prefix: String::new(),
            partitions: 4,
            client: BTreeMap::new(),
        }
    }
}

/// How events are delivered to subscribers, and how long the log keeps them.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Attempts at delivering one event before it moves to the dead letters
    /// and the consumer proceeds.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles up to `max_backoff_ms`.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Under load, a relay or a dispatcher woken by new events starts its
    /// next batch at most this often (ms), so that one transaction carries
    /// many events; an idle one starts at once (0: never wait).
    pub linger_ms: u64,
    /// Delivered events older than this are deleted from the log (0: keep).
    pub retention_hours: u64,
    /// At most this many delivered events are kept per topic (0: no limit).
    pub retention_events: u64,
    /// How often retention runs, in ms.
    pub retention_interval_ms: u64,
    /// Dead letters older than this are deleted (0: keep).
    pub dead_letter_hours: u64,
    /// At most this much of dead letters is kept, in MiB: the oldest go
    /// (0: no limit).
    pub dead_letter_mib: u64,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            max_attempts: 8,
            backoff_ms: 50,
            max_backoff_ms: 5_000,
            linger_ms: 2,
            retention_hours: 24 * 7,
            retention_events: 1_000_000,
            retention_interval_ms: 60_000,
            dead_letter_hours: 24 * 30,
            dead_letter_mib: 64,
        }
    }
}

impl Delivery {
    /// `linger_ms` as a duration.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    pub fn backoff(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.backoff_ms),
            Duration::from_millis(self.max_backoff_ms.max(self.backoff_ms)),
        )
    }
}

/// The operator's API under `/admin`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Bearer token required by every admin request; `RENTCAR_ADMIN_TOKEN`
    /// overrides it. Without a token the admin API is disabled.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on; `--listen` overrides it.
    pub listen: SocketAddr,
    /// Where the databases and the event log live; `--data-dir` overrides it.
    pub data_dir: PathBuf,
    /// Where compiled components are cached, by content digest. Defaults to
    /// `<data_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
    /// A connection must send a request's headers within this, new or kept
    /// alive, and a write to it must progress within it; else it is closed.
    pub header_timeout_ms: u64,
    /// A connection on which the client sends nothing for this long while
    /// the host waits for it (after connecting, and after each answer: kept
    /// alive) is closed. It takes effect below `header_timeout_ms`.
    pub idle_timeout_ms: u64,
    /// Connections open at once (fewer if the file limit is lower); beyond,
    /// new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// At shutdown, how long requests in flight get to finish.
    pub drain_ms: u64,
    /// What all instances of all components may hold in linear memory at
    /// once, in MiB (default: the sum of the components' budgets, at most
    /// half the machine's memory).
    pub memory_budget_mib: Option<u64>,
    /// What SQLite may allocate in the host, in MiB: page caches, and the
    /// sorts and temporary b-trees of statements, which it keeps in memory
    /// rather than in temporary files outside every `database_mib`. A
    /// statement past it fails with "out of memory".
    pub sqlite_heap_mib: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            // A literal, valid socket address.
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            data_dir: PathBuf::from("data"),
            cache_dir: None,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 5_000,
            max_connections: 1024,
            drain_ms: 10_000,
            memory_budget_mib: None,
            sqlite_heap_mib: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The component's `.wasm` file.
    pub path: PathBuf,
    /// Path prefixes routed to the component, e.g. `/orders`: a request goes
    /// to the component with the longest prefix matching its path.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Topics whose events are delivered to the component's `event-handler`.
    #[serde(default)]
    pub subscribe: Vec<Subscription>,
    /// Values the component reads through `wasi:config/store`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Sandbox limits of every instance of the component.
    #[serde(default)]
    pub limits: Limits,
}

impl ComponentConfig {
    /// The topics the component subscribes to.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.subscribe.iter().map(Subscription::topic)
    }
}

/// A topic a component hears: `"payment"`, or only some of its event types:
/// `{ topic = "rentcar", types = ["ReservationRejected"] }`. The host skips
/// the other events without instantiating the component.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a topic name, or a table { topic = \"...\", types = [\"...\"] }"
)]
pub enum Subscription {
    Topic(String),
    Types(TypedSubscription),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedSubscription {
    pub topic: String,
    pub types: Vec<String>,
}

impl Subscription {
    pub fn topic(&self) -> &str {
        match self {
            Subscription::Topic(topic) => topic,
            Subscription::Types(typed) => &typed.topic,
        }
    }

    /// Whether events of `event_type` are delivered.
    pub fn wants(&self, event_type: &str) -> bool {
        match self {
            Subscription::Topic(_) => true,
            Subscription::Types(typed) => typed.types.iter().any(|t| t == event_type),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest linear memory an instance may grow to, in MiB.
    pub memory_mib: u32,
    /// What all its instances may hold at once, in MiB (default: 16 ×
    /// `memory_mib`); beyond, an HTTP request gets 503 and an event waits.
    pub memory_budget_mib: Option<u32>,
    /// Deadline of one invocation (HTTP request, call or event), in ms.
    pub timeout_ms: u64,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_request_bytes: usize,
    /// Largest response body a component may produce, in bytes.
    pub max_response_bytes: usize,
    /// Instances that may run at once; beyond, invocations wait for one (an
    /// HTTP request gets 503 if none frees up within its deadline).
    pub max_instances: u32,
    /// Share of one core an instance may use, 1 to 100: above 100% of its
    /// share it is paused at every epoch tick, so a busy or looping
    /// component cannot starve its neighbours.
    pub cpu_percent: u32,
    /// Largest the component's database may grow, in MiB (its write-ahead
    /// log aside): beyond, writes fail with "database or disk is full".
    pub database_mib: u32,
    /// Largest the component's topic may grow in the event log, in MiB:
    /// retention deletes its oldest delivered events beyond half of it, and
    /// while undelivered ones fill it, new events wait in the component's
    /// outbox.
    pub log_mib: u32,
    /// How long a new version's `init` may hold the live database while the
    /// running version waits, in ms: a deploy whose migration takes longer
    /// on a copy is refused before it touches the live database.
    pub migration_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            memory_budget_mib: None,
            timeout_ms: 10_000,
            max_request_bytes: 1024 * 1024,
            max_response_bytes: 8 * 1024 * 1024,
            max_instances: 256,
            cpu_percent: 100,
            database_mib: 1024,
            log_mib: 256,
            migration_ms: 2_000,
        }
    }
}

impl Limits {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn log_bytes(&self) -> u64 {
        u64::from(self.log_mib) * 1024 * 1024
    }

    pub fn memory_budget_bytes(&self) -> usize {
        self.memory_budget_mib.unwrap_or(16 * self.memory_mib) as usize * 1024 * 1024
    }

    pub fn memory_bytes(&self) -> usize {
        self.memory_mib as usize * 1024 * 1024
    }
}

/// A synchronous link: `from` imports `interface` and the host satisfies the
/// import by calling into a fresh instance of `to`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub from: String,
    pub to: String,
    /// Fully qualified WIT interface, e.g. `rentcar:payment/payments@0.1.0`.
    pub interface: String,
    /// How long the caller waits for the callee (queueing included), in ms.
    #[serde(default = "default_link_timeout_ms")]
    pub timeout_ms: u64,
    /// Bulkhead: calls in flight at once; more callers wait in a queue.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    /// Callers allowed to wait for a slot; beyond, `unavailable` at once.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// Functions safe to call twice: retried on failure, up to `retries`.
    #[serde(default)]
    pub idempotent: Vec<String>,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub circuit: CircuitConfig,
}

fn default_link_timeout_ms() -> u64 {
    5_000
}

fn default_max_concurrent() -> u32 {
    64
}

fn default_max_queue() -> u32 {
    256
}

/// When a link's circuit opens, and for how long.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// Failures in a row that open the circuit.
    pub consecutive_failures: u32,
    /// Share of failures among the last `window` calls that opens it.
    pub failure_ratio: f64,
    pub window: u32,
    /// How long it stays open before a probe call is let through, in ms.
    pub open_ms: u64,
    /// A call at least this slow counts as a failure (it still succeeds).
    pub slow_call_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: 20,
            open_ms: 5_000,
            slow_call_ms: 2_000,
        }
    }
}

impl Link {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|err| match err {
            ConfigError::Invalid(message) => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text; relative paths are resolved
    /// against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|err| ConfigError::Invalid(err.to_string()))?;
        for component in config.components.values_mut() {
            component.path = base.join(&component.path);
        }
        config.server.data_dir = base.join(&config.server.data_dir);
        if let Some(cache_dir) = &mut config.server.cache_dir {
            *cache_dir = base.join(&*cache_dir);
        }
        if let Some(jwks) = &mut config.auth.jwks
            && !jwks.starts_with("http://")
            && !jwks.starts_with("https://")
        {
            *jwks = base.join(&*jwks).to_string_lossy().into_owned();
        }
        config.validate()?;
        Ok(config)
    }

    /// Where compiled components are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.server
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("cache"))
    }

    /// The component that serves `path`: the longest matching prefix.
    pub fn route(&self, path: &str) -> Option<&str> {
        self.components
            .iter()
            .flat_map(|(name, component)| component.routes.iter().map(move |route| (route, name)))
            .filter(|(route, _)| covers(route, path))
            .max_by_key(|(route, _)| route.len())
            .map(|(_, name)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/base"))
    }

    #[test]
    fn routes_by_longest_prefix() {
        let config = parse(
            r#"
            [components.a]
            path = "a.wasm"
            routes = ["/cars"]
            [components.b]
            path = "b.wasm"
            routes = ["/cars/special"]
            "#,
        )
        .unwrap();
        assert_eq!(config.route("/cars"), Some("a"));
        assert_eq!(config.route("/cars/1"), Some("a"));
        assert_eq!(config.route("/cars/special/1"), Some("b"));
        assert_eq!(config.route("/carsx"), None);
        assert_eq!(config.components["a"].path, Path::new("/base/a.wasm"));
    }

    #[test]
    fn rejects_cycles_and_unknown_fields() {
        let cycle = parse(
            r#"
            [components.a]
            path = "a.wasm"
            [components.b]
            path = "b.wasm"
            [[links]]
            from = "a"
            to = "b"
            interface = "x:y/z"
            [[links]]
            from = "b"
            to = "a"
            interface = "x:y/z"
            "#,
        );
        assert!(cycle.unwrap_err().to_string().contains("cycle: a -> b -> a"));
        let unknown = parse("[components.a]\npath = \"a.wasm\"\nroutez = []\n");
        assert!(unknown.unwrap_err().to_string().contains("unknown field `routez`"));
    }

    #[test]
    fn limits_and_circuits_that_could_never_work_are_refused() {
        let two = "[components.a]\npath = \"a.wasm\"\n[components.b]\npath = \"b.wasm\"\n";
        let link = "[[links]]\nfrom = \"a\"\nto = \"b\"\ninterface = \"i\"\n";
        assert!(parse(&format!("{two}{link}")).is_ok());
        for (table, setting) in [
            ("[components.a.limits]", "max_instances = 0"),
            ("[components.a.limits]", "cpu_percent = 0"),
        ] {
            let refused = parse(&format!("{two}{table}\n{setting}\n")).unwrap_err().to_string();
            assert!(refused.contains("greater than zero"), "{setting}: {refused}");
        }
        for setting in [
            "max_concurrent = 0",
            "circuit.consecutive_failures = 0",
            "circuit.window = 0",
            "circuit.failure_ratio = 0.0",
            "circuit.failure_ratio = 1.5",
        ] {
            let refused = parse(&format!("{two}{link}{setting}\n")).unwrap_err().to_string();
            assert!(refused.contains("above zero"), "{setting}: {refused}");
        }
    }

    #[test]
    fn linger_defaults_to_2_ms_and_is_bounded() {
        let components = "[components.a]\npath = \"a.wasm\"\n";
        assert_eq!(parse(components).unwrap().delivery.linger(), Duration::from_millis(2));
        let off = parse(&format!("{components}[delivery]\nlinger_ms = 0\n")).unwrap();
        assert_eq!(off.delivery.linger(), Duration::ZERO);
        let long = parse(&format!("{components}[delivery]\nlinger_ms = 5000\n"));
        assert!(long.unwrap_err().to_string().contains("linger_ms is at most 1000"));
    }

    #[test]
    fn subscriptions_name_topics_and_optionally_event_types() {
        let config = parse(
            r#"
            [components.a]
            path = "a.wasm"
            subscribe = ["t", { topic = "u", types = ["A", "B"] }]
            [components.t]
            path = "t.wasm"
            [components.u]
            path = "u.wasm"
            "#,
        )
        .unwrap();
        let a = &config.components["a"];
        assert_eq!(a.topics().collect::<Vec<_>>(), ["t", "u"]);
        assert!(a.subscribe[0].wants("Anything"));
        assert!(a.subscribe[1].wants("B") && !a.subscribe[1].wants("C"));

        let refused = |subscribe: &str| {
            let others = "[components.t]\npath = \"t.wasm\"\n[components.u]\npath = \"u.wasm\"\n";
            parse(&format!(
                "{others}[components.a]\npath = \"a.wasm\"\nsubscribe = {subscribe}\n"
            ))
            .unwrap_err()
            .to_string()
        };
        assert!(refused(r#"[{ topic = "u" }]"#).contains("a topic name, or a table"));
        assert!(refused(r#"[{ topic = "u", types = [] }]"#).contains("no event type of `u`"));
        assert!(refused(r#"["t", { topic = "t", types = ["A"] }]"#).contains("`t` twice"));
        assert!(refused(r#"[""]"#).contains("empty topic name"));
        assert!(refused(r#"["v"]"#).contains("no component of that name publishes it"));
    }
}
