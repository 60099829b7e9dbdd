//! Whole-file validation: everything a config must satisfy before the host
//! loads anything, each failure a message that says what to fix.

use std::collections::{BTreeMap, BTreeSet};

use super::{BusKind, Config, ConfigError, Subscription};

/// Longest `delivery.linger_ms`.
const MAX_LINGER_MS: u64 = 1_000;

/// Paths the host keeps for itself.
const RESERVED_PREFIXES: &[&str] = &[
    "/admin",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/console",
    "/_cluster",
];

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.components.is_empty() {
            return invalid("no components: add at least one [components.NAME] table".into());
        }
        let mut routes = BTreeMap::new();
        for (name, component) in &self.components {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return invalid(format!("component name `{name}` must be letters, digits, `-` or `_`"));
            }
            for route in &component.routes {
                if !route.starts_with('/') || route.len() < 2 || route.ends_with('/') {
                    return invalid(format!(
                        "route `{route}` of component `{name}` must start with `/` and not end with `/`, e.g. `/orders`"
                    ));
                }
                if let Some(reserved) = RESERVED_PREFIXES
                    .iter()
                    .find(|p| route == *p || route.starts_with(&format!("{p}/")))
                {
                    return invalid(format!(
                        "route `{route}` of component `{name}` is under `{reserved}`, which the host keeps for itself"
                    ));
                }
                if let Some(other) = routes.insert(route.clone(), name.clone()) {
                    return invalid(format!("route `{route}` is claimed by both `{other}` and `{name}`"));
                }
            }
            for subscription in &component.subscribe {
                if subscription.topic().is_empty() {
                    return invalid(format!("component `{name}` subscribes to an empty topic name"));
                }
                // A topic is the component that publishes on it.
                if !self.components.contains_key(subscription.topic()) {
                    return invalid(format!(
                        "component `{name}` subscribes to `{}`, but no component of that name publishes it",
                        subscription.topic()
                    ));
                }
                if let Subscription::Types(typed) = subscription
                    && typed.types.is_empty()
                {
                    return invalid(format!(
                        "component `{name}` subscribes to no event type of `{}`; list some or drop the topic",
                        typed.topic
                    ));
                }
            }
            let mut topics = BTreeSet::new();
            if let Some(twice) = component.topics().find(|topic| !topics.insert(*topic)) {
                return invalid(format!("component `{name}` subscribes to `{twice}` twice"));
            }
            let limits = component.limits;
            if limits.memory_mib == 0
                || limits.timeout_ms == 0
                || limits.max_request_bytes == 0
                || limits.max_response_bytes == 0
                || limits.max_instances == 0
                || limits.cpu_percent == 0
                || limits.database_mib == 0
                || limits.log_mib == 0
                || limits.migration_ms == 0
            {
                return invalid(format!("limits of component `{name}` must all be greater than zero"));
            }
            if limits
                .memory_budget_mib
                .is_some_and(|budget| budget < limits.memory_mib)
            {
                return invalid(format!(
                    "component `{name}`: memory_budget_mib must be at least memory_mib (one instance)"
                ));
            }
        }
        for link in &self.links {
            for end in [&link.from, &link.to] {
                if !self.components.contains_key(end) {
                    return invalid(format!(
                        "link {} -> {} names `{end}`, which is not a component",
                        link.from, link.to
                    ));
                }
            }
            if link.timeout_ms == 0 || link.max_concurrent == 0 {
                return invalid(format!(
                    "link {} -> {} needs timeout_ms and max_concurrent above zero",
                    link.from, link.to
                ));
            }
            let circuit = link.circuit;
            // Zero failures in a row, or a ratio of zero, would open the
            // circuit on every call, successful ones included.
            if circuit.consecutive_failures == 0
                || circuit.window == 0
                || !(circuit.failure_ratio > 0.0 && circuit.failure_ratio <= 1.0)
            {
                return invalid(format!(
                    "link {} -> {}: the circuit needs consecutive_failures and window above zero \
                     and a failure_ratio above 0 and at most 1",
                    link.from, link.to
                ));
            }
        }
        let server = &self.server;
        if server.header_timeout_ms == 0
            || server.idle_timeout_ms == 0
            || server.max_connections == 0
            || server.sqlite_heap_mib == 0
        {
            return invalid(
                "[server] needs header_timeout_ms, idle_timeout_ms, max_connections and sqlite_heap_mib above zero"
                    .into(),
            );
        }
        self.auth.check().map_err(ConfigError::Invalid)?;
        for limit in &self.rate_limits {
            limit.check().map_err(ConfigError::Invalid)?;
        }
        let delivery = self.delivery;
        if delivery.max_attempts == 0 {
            return invalid("[delivery] needs max_attempts >= 1".into());
        }
        let bus = &self.bus;
        if bus.partitions == 0 || bus.partitions > 1024 {
            return invalid("[bus] partitions is from 1 to 1024".into());
        }
        if bus.kind == BusKind::Kafka && bus.brokers.as_deref().is_none_or(|b| b.trim().is_empty()) {
            return invalid("[bus] kind = \"kafka\" needs brokers, e.g. brokers = \"127.0.0.1:9092\"".into());
        }
        if delivery.retention_interval_ms == 0 {
            return invalid("[delivery] retention_interval_ms must be above zero".into());
        }
        if delivery.linger_ms > MAX_LINGER_MS {
            return invalid(format!(
                "[delivery] linger_ms is at most {MAX_LINGER_MS}: every event under load waits up to it"
            ));
        }
        self.validate_nodes()?;
        self.check_links_acyclic()
    }

    /// A caller holds its database during a call, so a cycle of links
    /// (order -> payment -> order) would wait on itself.
    fn check_links_acyclic(&self) -> Result<(), ConfigError> {
        fn visit<'a>(
            node: &'a str,
            edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
            path: &mut Vec<&'a str>,
        ) -> Result<(), ConfigError> {
            if let Some(start) = path.iter().position(|n| *n == node) {
                let cycle = path[start..].join(" -> ");
                return Err(ConfigError::Invalid(format!("links form a cycle: {cycle} -> {node}")));
            }
            path.push(node);
            for next in edges.get(node).into_iter().flatten() {
                visit(next, edges, path)?;
            }
            path.pop();
            Ok(())
        }
        let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for link in &self.links {
            edges.entry(&link.from).or_default().insert(&link.to);
        }
        for node in edges.keys() {
            visit(node, &edges, &mut Vec::new())?;
        }
        Ok(())
    }
}
