//! Linked calls across nodes. When the callee runs on another node, the
//! caller's node sends each call over HTTP to `POST
//! {node}/_cluster/calls/{callee}`; the callee's node runs it as a local
//! call (a fresh instance, its own transaction) and sends the result back.
//!
//! Values travel as WAVE text (the WebAssembly Value Encoding, e.g.
//! `{amount: 3000, order-id: 7}` or `err(unavailable("timed out"))`),
//! decoded against the receiving side's own types. Every call carries the
//! caller's signature of the function; the callee's node refuses it when
//! its export differs, so a swap on one node can never feed the other
//! values of the wrong shape. At start and at each swap the caller's node
//! also asks the callee's node for the whole interface
//! (`GET {node}/_cluster/interfaces/{callee}?interface=...`), to refuse a
//! mismatch before any call.
//!
//! Node-to-node requests carry the cluster secret in [`SECRET_HEADER`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use wasmtime::component::types::ComponentFunc;
use wasmtime::component::{Type, Val};

use super::{Callee, LocalCallee, NotRunning};
use crate::config::{Link, Node};
use crate::instance::registry::Registry;

/// Proves that a request comes from another node.
pub const SECRET_HEADER: &str = "rentcar-cluster-secret";
/// How long the sender waits, in ms: the receiver gives up then too.
pub const TIMEOUT_HEADER: &str = "rentcar-timeout-ms";

/// The other nodes, as one node sees them: an HTTP client and the secret.
pub struct Peers {
    pub client: reqwest::Client,
    pub secret: String,
}

impl Peers {
    pub fn new(secret: &str) -> anyhow::Result<Peers> {
        let client = reqwest::Client::builder()
            // Below the receiving node's `idle_timeout_ms` (5 s by
            // default): a connection it closed for idling is not reused.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .context("cannot build the HTTP client of the cluster")?;
        Ok(Peers {
            client,
            secret: secret.to_string(),
        })
    }
}

/// One call, as it travels.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallRequest {
    pub interface: String,
    pub function: String,
    /// The caller's type of the function (see [`signature`]).
    pub signature: String,
    /// Each parameter in WAVE.
    pub params: Vec<String>,
}

/// The callee's `result<_, E>`, in WAVE.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallAnswer {
    pub result: String,
}

/// The functions of an exported interface and their signatures.
#[derive(Debug, Serialize, Deserialize)]
pub struct InterfaceTypes {
    pub functions: BTreeMap<String, String>,
}

/// Why a node would not run a call.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("component `{0}` does not run on this node")]
    NotRunning(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the call failed")]
    Failed(#[source] anyhow::Error),
}

/// A function's type as text, e.g. `func(order-id: u64) -> result<u64,
/// variant{declined(string), unavailable(string)}>`: what both ends
/// compare. Resources, futures and streams cannot cross nodes.
pub fn signature(func: &ComponentFunc) -> anyhow::Result<String> {
    let params = func
        .params()
        .map(|(name, ty)| Ok(format!("{name}: {}", describe(&ty)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let results = func
        .results()
        .map(|ty| describe(&ty))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(format!("func({}) -> {}", params.join(", "), results.join(", ")))
}

fn describe(ty: &Type) -> anyhow::Result<String> {
    let list = |types: Vec<anyhow::Result<String>>| types.into_iter().collect::<anyhow::Result<Vec<_>>>();
    Ok(match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(list) => format!("list<{}>", describe(&list.ty())?),
        Type::Record(record) => {
            let fields = list(
                record
                    .fields()
                    .map(|f| Ok(format!("{}: {}", f.name, describe(&f.ty)?)))
                    .collect(),
            )?;
            format!("record{{{}}}", fields.join(", "))
        }
        Type::Tuple(tuple) => format!(
            "tuple<{}>",
            list(tuple.types().map(|t| describe(&t)).collect())?.join(", ")
        ),
        Type::Variant(variant) => {
            let cases = list(
                variant
                    .cases()
                    .map(|case| match &case.ty {
                        Some(ty) => Ok(format!("{}({})", case.name, describe(ty)?)),
                        None => Ok(case.name.to_string()),
                    })
                    .collect(),
            )?;
            format!("variant{{{}}}", cases.join(", "))
        }
        Type::Enum(names) => format!("enum{{{}}}", names.names().collect::<Vec<_>>().join(", ")),
        Type::Flags(names) => format!("flags{{{}}}", names.names().collect::<Vec<_>>().join(", ")),
        Type::Option(option) => format!("option<{}>", describe(&option.ty())?),
        Type::Result(result) => {
            let side = |ty: Option<Type>| ty.map_or(Ok("_".to_string()), |ty| describe(&ty));
            format!("result<{}, {}>", side(result.ok())?, side(result.err())?)
        }
        other => bail!("a value of type {other:?} cannot cross nodes"),
    })
}

/// The signatures of `functions`.
pub fn signatures(functions: &[(String, ComponentFunc)]) -> anyhow::Result<BTreeMap<String, String>> {
    functions
        .iter()
        .map(|(name, func)| {
            Ok((
                name.clone(),
                signature(func).with_context(|| format!("function `{name}`"))?,
            ))
        })
        .collect()
}

/// A linked component on another node.
pub struct RemoteCallee {
    peers: Arc<Peers>,
    /// `{node}/_cluster/calls/{callee}`.
    calls: String,
    /// `{node}/_cluster/interfaces/{callee}?interface=...`.
    types: String,
    link: Link,
    /// The signature of every function the caller imports.
    signatures: BTreeMap<String, String>,
    /// The type of each one's result, to decode the answer with.
    results: BTreeMap<String, Type>,
}

/// Why the callee's node did not confirm the interface.
#[derive(Debug, thiserror::Error)]
pub enum Unverified {
    /// It could not be asked (it may start later): every call is checked
    /// anyway.
    #[error("cannot reach the node of `{0}`: {1:#}")]
    Unreachable(String, anyhow::Error),
    #[error("{0}")]
    Mismatch(String),
}

impl RemoteCallee {
    /// The callee of `link` on `node`, for the functions the caller imports.
    pub fn new(
        peers: Arc<Peers>,
        node: &Node,
        link: &Link,
        imported: &[(String, ComponentFunc)],
    ) -> anyhow::Result<RemoteCallee> {
        let results = imported
            .iter()
            .map(|(name, func)| {
                Ok((
                    name.clone(),
                    func.results().next().context("a linked function returns a result")?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(RemoteCallee {
            peers,
            calls: format!("{}/_cluster/calls/{}", node.base(), link.to),
            types: format!("{}/_cluster/interfaces/{}", node.base(), link.to),
            link: link.clone(),
            signatures: signatures(imported)?,
            results,
        })
    }

    /// Asks the callee's node whether the component it runs exports every
    /// function the caller imports, with the same types.
    pub async fn verify(&self) -> Result<(), Unverified> {
        let unreachable = |err: anyhow::Error| Unverified::Unreachable(self.link.to.clone(), err);
        let response = self
            .peers
            .client
            .get(&self.types)
            .query(&[("interface", &self.link.interface)])
            .header(SECRET_HEADER, &self.peers.secret)
            .timeout(self.link.timeout())
            .send()
            .await
            .map_err(|err| unreachable(err.into()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(unreachable(anyhow!("`{}` is not running there", self.link.to)));
        }
        if status == reqwest::StatusCode::CONFLICT {
            let message = response.text().await.unwrap_or_default();
            return Err(Unverified::Mismatch(format!(
                "link {} -> {}: the node of `{}` answered {status}: {message}",
                self.link.from, self.link.to, self.link.to
            )));
        }
        if !status.is_success() {
            return Err(unreachable(anyhow!("it answered {status}")));
        }
        let offered: InterfaceTypes = response.json().await.map_err(|err| unreachable(err.into()))?;
        let (from, to) = (&self.link.from, &self.link.to);
        match first_difference(&self.signatures, &offered.functions) {
            None => Ok(()),
            Some((function, wanted, Some(served))) => Err(Unverified::Mismatch(format!(
                "link {from} -> {to}: function `{function}` is `{served}` on the node of `{to}`, \
                 but `{from}` expects `{wanted}`"
            ))),
            Some((function, _, None)) => Err(Unverified::Mismatch(format!(
                "link {from} -> {to}: `{to}` does not export function `{function}`"
            ))),
        }
    }
}

#[async_trait]
impl Callee for RemoteCallee {
    async fn call(&self, function: &str, params: &[Val], request_id: Option<String>) -> anyhow::Result<Val> {
        let (Some(signature), Some(result_type)) = (self.signatures.get(function), self.results.get(function)) else {
            bail!("function `{function}` is not imported");
        };
        let call = CallRequest {
            interface: self.link.interface.clone(),
            function: function.to_string(),
            signature: signature.clone(),
            params: params.iter().map(Val::to_wave).collect::<Result<_, _>>()?,
        };
        let mut request = self
            .peers
            .client
            .post(&self.calls)
            .header(SECRET_HEADER, &self.peers.secret)
            .header(TIMEOUT_HEADER, self.link.timeout_ms)
            .json(&call);
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        let response = request.send().await.context("cannot reach the callee's node")?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(anyhow!(NotRunning));
        }
        if !status.is_success() {
            let message = response.text().await.unwrap_or_default();
            bail!("the callee's node answered {status}: {message}");
        }
        let answer: CallAnswer = response.json().await.context("the callee's node answered no result")?;
        Val::from_wave(result_type, &answer.result)
            .map_err(anyhow::Error::from)
            .context("the callee's node answered a result of another type")
    }
}

/// Runs a call that came from another node on `component` here: checks
/// that the caller's signature is the export's, decodes the parameters
/// against the export's types, and calls it as a local callee would be.
pub async fn answer(
    registry: &Arc<Registry>,
    component: &str,
    call: CallRequest,
    request_id: Option<String>,
) -> Result<CallAnswer, Refusal> {
    let running = registry
        .get(component)
        .ok_or_else(|| Refusal::NotRunning(component.into()))?;
    let engine = running.component().engine().clone();
    let functions = super::exported(&engine, running.component(), &call.interface)
        .map_err(|err| Refusal::Mismatch(format!("`{component}`: {err:#}")))?;
    let (_, func) = functions
        .iter()
        .find(|(name, _)| *name == call.function)
        .ok_or_else(|| Refusal::Mismatch(format!("`{component}` exports no function `{}`", call.function)))?;
    let served = signature(func).map_err(|err| Refusal::Mismatch(format!("{err:#}")))?;
    if served != call.signature {
        return Err(Refusal::Mismatch(format!(
            "`{component}` exports `{}` as `{served}`, the caller expects `{}`",
            call.function, call.signature
        )));
    }
    let types: Vec<Type> = func.params().map(|(_, ty)| ty).collect();
    if types.len() != call.params.len() {
        return Err(Refusal::BadRequest(format!(
            "`{}` takes {} parameters, not {}",
            call.function,
            types.len(),
            call.params.len()
        )));
    }
    let params = types
        .iter()
        .zip(&call.params)
        .map(|(ty, text)| Val::from_wave(ty, text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| Refusal::BadRequest(format!("a parameter is not a valid value: {err}")))?;
    drop(running);
    let local = LocalCallee::new(registry.clone(), component, &call.interface);
    let result =
        local
            .call(&call.function, &params, request_id)
            .await
            .map_err(|err| match err.downcast::<NotRunning>() {
                Ok(_) => Refusal::NotRunning(component.into()),
                Err(err) => Refusal::Failed(err),
            })?;
    let result = result.to_wave().map_err(|err| Refusal::Failed(err.into()))?;
    Ok(CallAnswer { result })
}

/// The signatures of `interface` as `component` exports it here.
pub fn interface(registry: &Registry, component: &str, interface: &str) -> Result<InterfaceTypes, Refusal> {
    let running = registry
        .get(component)
        .ok_or_else(|| Refusal::NotRunning(component.into()))?;
    let engine = running.component().engine().clone();
    let functions = super::exported(&engine, running.component(), interface)
        .map_err(|err| Refusal::Mismatch(format!("`{component}`: {err:#}")))?;
    let functions = signatures(&functions).map_err(|err| Refusal::Mismatch(format!("{err:#}")))?;
    Ok(InterfaceTypes { functions })
}

/// Refuses a new version of a component whose export of `interface`
/// differs from the running version's: its callers on other nodes were
/// checked against the running one.
pub fn check_same_export(
    engine: &wasmtime::Engine,
    running: &wasmtime::component::Component,
    new: &wasmtime::component::Component,
    interface: &str,
) -> anyhow::Result<()> {
    let before = signatures(&super::exported(engine, running, interface)?)?;
    let after = signatures(&super::exported(engine, new, interface).context("callers on other nodes use it")?)?;
    match first_difference(&before, &after) {
        None => Ok(()),
        Some((function, signature, Some(new))) => bail!(
            "it changes `{function}` of `{interface}` from `{signature}` to `{new}`, \
             which callers on other nodes use"
        ),
        Some((function, _, None)) => bail!("it drops `{function}` of `{interface}`, which callers on other nodes use"),
    }
}

/// The first function of `wanted` that `offered` lacks or types otherwise:
/// its name, its wanted signature, and the offered one if any.
fn first_difference<'a>(
    wanted: &'a BTreeMap<String, String>,
    offered: &'a BTreeMap<String, String>,
) -> Option<(&'a str, &'a str, Option<&'a str>)> {
    wanted
        .iter()
        .find_map(|(function, signature)| match offered.get(function) {
            Some(served) if served == signature => None,
            served => Some((function.as_str(), signature.as_str(), served.map(String::as_str))),
        })
}
