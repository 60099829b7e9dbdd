//! Synchronous typed calls between components.
//!
//! A link in `runtime.toml` (`order -> payment`, interface
//! `rentcar:payment/payments@0.1.0`) makes the host define every function of
//! that interface in the caller's linker. Calling one instantiates the callee
//! afresh, in its own `Store` and its own transaction, and hands the result
//! back as a value. The WIT contract of a linked interface is that every
//! function returns `result<_, E>` where the variant `E` has a case
//! `unavailable(string)`: when the callee fails (trap, deadline, timeout, not
//! loaded) the caller gets that case, never a trap of its own.
//!
//! Every call goes through the link's [`Policy`] (bulkhead, circuit breaker,
//! retries of idempotent functions) and through the callee's injected
//! [`Faults`], all within the link's timeout.

mod callee;
pub mod faults;
pub mod policy;
pub mod remote;

pub use callee::{Callee, LocalCallee};

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, Linker, Type, Val};

use crate::calls::faults::Faults;
use crate::calls::policy::{Policy, Refused};
use crate::config::Link;
use crate::instance::invocation::Invocation;
use crate::instance::slot::DeadlineExceeded;
use crate::store::lacks_storage;

/// Defines `functions` of the link's interface in the caller's linker:
/// each call goes through `policy` and `faults` to `target`. The link is
/// checked first ([`check`] for a callee here, [`imported`] and the
/// callee's node for one elsewhere).
pub fn define(
    linker: &mut Linker<Invocation>,
    functions: Vec<String>,
    policy: Arc<Policy>,
    target: Arc<dyn Callee>,
    faults: Arc<Faults>,
) -> anyhow::Result<()> {
    let mut instance = linker.instance(&policy.link.interface)?;
    for function in functions {
        let (policy, target, faults) = (policy.clone(), target.clone(), faults.clone());
        let function = Arc::new(function);
        instance.func_new_async(&function.clone(), move |mut caller, _ty, params, results| {
            let (policy, target, faults, function) = (policy.clone(), target.clone(), faults.clone(), function.clone());
            let request_id = caller.data().request_id.clone();
            Box::new(async move {
                let link = &policy.link;
                let call = Call { policy: &policy, callee: target.as_ref(), faults: &faults, function: &function, request_id };
                results[0] = match call.run(params).await {
                    Ok(result) => result,
                    Err(err) => {
                        tracing::warn!(cause = %format!("{err:#}"), from = %link.from, to = %link.to, function = %function, "synchronous call failed");
                        // The caller's failure, if it fails, is for lack of
                        // storage too.
                        if lacks_storage(&err) {
                            caller.data_mut().storage_full = true;
                        }
                        unavailable(&err)
                    }
                };
                Ok(())
            })
        })?;
    }
    Ok(())
}

/// Checks that `caller` and `callee` fit `link`: the caller imports the
/// interface, the callee exports every function the caller imports with the
/// same types, and each returns `result<_, E>` with `E` having a case
/// `unavailable(string)`. Returns the functions the caller imports. Used at
/// start-up and before a new version of either side is let in.
pub fn check(engine: &Engine, caller: &Component, callee: &Component, link: &Link) -> anyhow::Result<Vec<String>> {
    let name = link_name(link);
    let wanted = imported(engine, caller, link)?;
    let offered =
        exported(engine, callee, &link.interface).with_context(|| format!("{name}: `{}` cannot serve it", link.to))?;
    for (function, ty) in &wanted {
        let Some((_, served)) = offered.iter().find(|(name, _)| name == function) else {
            bail!("{name}: `{}` does not export function `{function}`", link.to);
        };
        let same = ty.params().map(|(_, t)| t).eq(served.params().map(|(_, t)| t)) && ty.results().eq(served.results());
        if !same {
            bail!(
                "{name}: function `{function}` has other types in `{}` than `{}` expects",
                link.to,
                link.from
            );
        }
    }
    Ok(wanted.into_iter().map(|(function, _)| function).collect())
}

/// The functions `caller` imports through `link`, each checked to return
/// `result<_, E>` with `E` having a case `unavailable(string)`.
pub fn imported(engine: &Engine, caller: &Component, link: &Link) -> anyhow::Result<Vec<(String, ComponentFunc)>> {
    let name = link_name(link);
    let caller_type = caller.component_type();
    let imported = caller_type
        .imports(engine)
        .find(|(import, _)| *import == link.interface);
    let Some(ComponentItem::ComponentInstance(imported)) = imported.map(|(_, import)| import.ty) else {
        bail!("{name}: `{}` does not import `{}`", link.from, link.interface);
    };
    let wanted = functions(imported.exports(engine).map(|(name, item)| (name, item.ty)));
    for (function, ty) in &wanted {
        check_shape(function, ty).with_context(|| format!("{name}: function `{function}`"))?;
    }
    Ok(wanted)
}

/// The functions of `interface` that `component` exports.
pub fn exported(
    engine: &Engine,
    component: &Component,
    interface: &str,
) -> anyhow::Result<Vec<(String, ComponentFunc)>> {
    let component_type = component.component_type();
    let exported = component_type.exports(engine).find(|(name, _)| *name == interface);
    let Some(ComponentItem::ComponentInstance(exported)) = exported.map(|(_, export)| export.ty) else {
        bail!("it does not export `{interface}`");
    };
    Ok(functions(exported.exports(engine).map(|(name, item)| (name, item.ty))))
}

fn link_name(link: &Link) -> String {
    format!("link {} -> {} ({})", link.from, link.to, link.interface)
}

fn functions<'a>(items: impl Iterator<Item = (&'a str, ComponentItem)>) -> Vec<(String, ComponentFunc)> {
    items
        .filter_map(|(name, item)| match item {
            ComponentItem::ComponentFunc(func) => Some((name.to_string(), func)),
            _ => None,
        })
        .collect()
}

/// Checks that a function returns `result<_, E>` with `E` a variant that has
/// an `unavailable(string)` case.
fn check_shape(function: &str, ty: &ComponentFunc) -> anyhow::Result<()> {
    let mut results = ty.results();
    let (Some(Type::Result(result)), None) = (results.next(), results.next()) else {
        bail!("`{function}` must return one `result<_, E>`");
    };
    let Some(Type::Variant(error)) = result.err() else {
        bail!("the error type of `{function}` must be a variant");
    };
    if !error
        .cases()
        .any(|case| case.name == "unavailable" && matches!(case.ty, Some(Type::String)))
    {
        bail!("the error variant of `{function}` needs a case `unavailable(string)`");
    }
    Ok(())
}

/// One call through a link.
struct Call<'a> {
    policy: &'a Policy,
    callee: &'a dyn Callee,
    faults: &'a Faults,
    function: &'a str,
    /// The caller's request, carried into the callee.
    request_id: Option<String>,
}

impl Call<'_> {
    /// The call through the link's policy, within its timeout.
    async fn run(&self, params: &[Val]) -> anyhow::Result<Val> {
        let link = &self.policy.link;
        let deadline = tokio::time::Instant::now() + link.timeout();
        let timed_out = || anyhow!(DeadlineExceeded).context(format!("no answer within {} ms", link.timeout_ms));
        let ticket = match tokio::time::timeout_at(deadline, self.policy.admit()).await {
            Ok(admitted) => admitted?,
            Err(_) => return Err(timed_out()),
        };
        let retries = if link.idempotent.iter().any(|f| f == self.function) {
            link.retries
        } else {
            0
        };
        let started = Instant::now();
        let mut attempt = 0;
        let result = loop {
            let once = async {
                if self.faults.inject(&link.to).await {
                    return Err(anyhow!(FaultInjected));
                }
                let answer = self.callee.call(self.function, params, self.request_id.clone()).await;
                self.faults.delay_reply(&link.to).await;
                answer
            };
            let outcome = tokio::time::timeout_at(deadline, once)
                .await
                .unwrap_or_else(|_| Err(timed_out()));
            let storage = outcome.as_ref().is_err_and(lacks_storage);
            if outcome.is_ok() || storage || attempt >= retries || tokio::time::Instant::now() >= deadline {
                break outcome;
            }
            attempt += 1;
            tracing::debug!(to = %link.to, function = %self.function, attempt, "retrying an idempotent call");
            tokio::time::sleep(RETRY_PAUSE * attempt).await;
        };
        // A full disk says nothing about the callee's health: the ticket is
        // dropped unrecorded.
        if !result.as_ref().is_err_and(lacks_storage) {
            self.policy.record(ticket, result.is_err(), started.elapsed());
        }
        result
    }
}

/// Pause before the first retry of an idempotent call; grows linearly.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
#[error("the callee is not running")]
pub struct NotRunning;

#[derive(Debug, thiserror::Error)]
#[error("fault injected")]
struct FaultInjected;

/// `err(unavailable(reason))`, the value a caller gets for a failed call.
fn unavailable(err: &anyhow::Error) -> Val {
    // The details are in the log; the caller learns only what kind of failure.
    let reason = if DeadlineExceeded::caused(err) {
        "timed out"
    } else if err.is::<NotRunning>() {
        "not running"
    } else if let Some(refused) = err.downcast_ref::<Refused>() {
        match refused {
            Refused::CircuitOpen => "circuit open",
            Refused::BulkheadFull => "too many concurrent calls",
        }
    } else if err.is::<FaultInjected>() {
        "fault injected"
    } else if lacks_storage(err) {
        "insufficient storage"
    } else {
        "failed"
    };
    let error = Val::Variant("unavailable".into(), Some(Box::new(Val::String(reason.into()))));
    Val::Result(Err(Some(Box::new(error))))
}
