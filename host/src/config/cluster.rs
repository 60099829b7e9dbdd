//! Placement: which node runs which component (`[nodes.NAME]`), and the
//! secret the nodes prove themselves to each other with (`[cluster]`).
//!
//! Every node loads the same file, so each knows where every component
//! runs; `serve --node NAME` says which node this process is. Without
//! `[nodes]` one process runs everything.

use std::net::{SocketAddr, ToSocketAddrs as _};

use serde::Deserialize;

use super::{BusKind, ComponentConfig, Config, ConfigError};

/// One node: where it is reached and what it runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// `http://host:port`, where the other nodes reach it; it listens on
    /// that address unless `--listen` says otherwise.
    pub url: String,
    pub components: Vec<String>,
}

impl Node {
    /// The node's URL without a trailing `/`, to put paths after.
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    /// The `host:port` of its URL, resolved.
    pub fn address(&self) -> Result<SocketAddr, String> {
        let authority = self
            .url
            .strip_prefix("http://")
            .ok_or_else(|| format!("node url `{}` must start with http://", self.url))?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            return Err(format!(
                "node url `{}` must be http://host:port, without a path",
                self.url
            ));
        }
        authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| format!("node url `{}`: cannot resolve `{authority}`", self.url))
    }
}

/// What the nodes share.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Proves a request comes from another node (`RENTCAR_CLUSTER_SECRET`
    /// overrides it). Needed when there are nodes.
    pub secret: Option<String>,
}

/// A shorter secret is too easy to guess.
const MIN_SECRET_LEN: usize = 16;

impl Config {
    /// Whether this process runs `component`.
    pub fn runs_here(&self, component: &str) -> bool {
        match &self.this_node {
            None => true,
            Some(node) => self.nodes[node].components.iter().any(|c| c == component),
        }
    }

    /// The components this process runs, by name.
    pub fn local(&self) -> impl Iterator<Item = (&String, &ComponentConfig)> {
        self.components.iter().filter(|(name, _)| self.runs_here(name))
    }

    /// The node that runs `component`, when it is not this one.
    pub fn remote(&self, component: &str) -> Option<(&str, &Node)> {
        if self.runs_here(component) {
            return None;
        }
        self.nodes
            .iter()
            .find(|(_, node)| node.components.iter().any(|c| c == component))
            .map(|(name, node)| (name.as_str(), node))
    }

    /// The cluster secret, when there are nodes.
    pub fn cluster_secret(&self) -> Option<&str> {
        self.this_node.as_ref().and(self.cluster.secret.as_deref())
    }

    /// Makes this process node `name`: it runs that node's components and
    /// listens on its url's address, or on `listen`. Without `[nodes]`,
    /// `name` must be `None`; with them, it is required.
    pub fn become_node(&mut self, name: Option<&str>, listen: Option<SocketAddr>) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        let Some(name) = name else {
            if !self.nodes.is_empty() {
                let names: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
                return invalid(format!(
                    "the config places components on nodes ({}): say which this is with --node",
                    names.join(", ")
                ));
            }
            if let Some(listen) = listen {
                self.server.listen = listen;
            }
            return Ok(());
        };
        let Some(node) = self.nodes.get(name) else {
            return invalid(format!("--node {name}: the config has no [nodes.{name}]"));
        };
        if self.cluster.secret.as_ref().is_none_or(|s| s.len() < MIN_SECRET_LEN) {
            return invalid(format!(
                "nodes need a shared [cluster] secret of at least {MIN_SECRET_LEN} characters \
                 (or RENTCAR_CLUSTER_SECRET)"
            ));
        }
        if self.auth.enabled && self.auth.hs256_secret.is_none() && self.auth.jwks.is_none() {
            return invalid(
                "nodes must check tokens with the same key: set [auth] hs256_secret \
                 (or RENTCAR_JWT_SECRET) or jwks"
                    .into(),
            );
        }
        self.server.listen = match listen {
            Some(listen) => listen,
            None => node.address().map_err(ConfigError::Invalid)?,
        };
        self.this_node = Some(name.to_string());
        Ok(())
    }

    /// Each component on exactly one node, each node reachable by URL, and
    /// events on a bus the nodes share.
    pub(super) fn validate_nodes(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.nodes.is_empty() {
            return Ok(());
        }
        for (name, node) in &self.nodes {
            node.address()
                .map_err(|err| ConfigError::Invalid(format!("[nodes.{name}] {err}")))?;
            for component in &node.components {
                if !self.components.contains_key(component) {
                    return invalid(format!("[nodes.{name}] runs `{component}`, which is not a component"));
                }
            }
        }
        for component in self.components.keys() {
            let nodes: Vec<&str> = self
                .nodes
                .iter()
                .filter(|(_, node)| node.components.contains(component))
                .map(|(name, _)| name.as_str())
                .collect();
            match nodes.len() {
                0 => {
                    return invalid(format!(
                        "component `{component}` is on no node: add it to one [nodes.NAME]"
                    ));
                }
                1 => {}
                _ => {
                    return invalid(format!(
                        "component `{component}` is on several nodes ({}): a component runs on one node",
                        nodes.join(", ")
                    ));
                }
            }
        }
        if self.nodes.len() > 1 && self.bus.kind != BusKind::Kafka {
            return invalid("several nodes share their events on Kafka: set [bus] kind = \"kafka\" and brokers".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TWO: &str = r#"
        [components.a]
        path = "a.wasm"
        [components.b]
        path = "b.wasm"
        [bus]
        kind = "kafka"
        brokers = "127.0.0.1:9092"
        [cluster]
        secret = "sixteen characters at least"
        [auth]
        hs256_secret = "the tokens' secret"
        [nodes.one]
        url = "http://127.0.0.1:8081"
        components = ["a"]
        [nodes.two]
        url = "http://127.0.0.1:8082/"
        components = ["b"]
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/base"))
    }

    #[test]
    fn a_node_runs_its_components_and_knows_where_the_others_are() {
        let mut config = parse(TWO).unwrap();
        assert!(
            config
                .become_node(None, None)
                .unwrap_err()
                .to_string()
                .contains("--node")
        );
        config.become_node(Some("two"), None).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8082".parse().unwrap());
        assert!(config.runs_here("b") && !config.runs_here("a"));
        assert_eq!(config.local().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["b"]);
        let (name, node) = config.remote("a").unwrap();
        assert_eq!((name, node.base()), ("one", "http://127.0.0.1:8081"));
        assert!(config.remote("b").is_none());
        assert_eq!(config.cluster_secret(), Some("sixteen characters at least"));
    }

    #[test]
    fn placements_that_cannot_work_are_refused() {
        let refused = |from: &str, to: &str| parse(&TWO.replace(from, to)).unwrap_err().to_string();
        assert!(refused("components = [\"b\"]", "components = []").contains("`b` is on no node"));
        assert!(refused("components = [\"b\"]", "components = [\"a\", \"b\"]").contains("on several nodes"));
        assert!(refused("components = [\"b\"]", "components = [\"b\", \"c\"]").contains("`c`, which is not"));
        assert!(refused("kind = \"kafka\"", "kind = \"embedded\"").contains("on Kafka"));
        assert!(refused("http://127.0.0.1:8081", "127.0.0.1:8081").contains("http://"));
        let mut weak = parse(&TWO.replace("sixteen characters at least", "short")).unwrap();
        assert!(
            weak.become_node(Some("one"), None)
                .unwrap_err()
                .to_string()
                .contains("[cluster] secret")
        );
        let mut config = parse(TWO).unwrap();
        assert!(config.become_node(Some("three"), None).is_err());
    }
}
