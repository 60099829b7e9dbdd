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

use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, Linker, Type, Val};

use crate::component::{DeadlineExceeded, Registry};
use crate::config::Link;
use crate::invocation::Invocation;

/// Defines the functions of `link.interface` in the caller's linker, after
/// checking that the callee exports the interface in the expected shape and
/// that the caller imports it.
pub fn define(
    linker: &mut Linker<Invocation>,
    engine: &Engine,
    caller: &Component,
    callee: &Component,
    link: &Link,
    registry: Arc<Registry>,
) -> anyhow::Result<()> {
    let name = format!("link {} -> {} ({})", link.from, link.to, link.interface);
    let imported = caller
        .component_type()
        .imports(engine)
        .any(|(import, _)| import == link.interface);
    if !imported {
        bail!("{name}: `{}` does not import `{}`", link.from, link.interface);
    }
    let functions = exported_functions(engine, callee, &link.interface)
        .with_context(|| format!("{name}: `{}` cannot serve it", link.to))?;
    let mut instance = linker.instance(&link.interface)?;
    for (function, ty) in functions {
        check_shape(&function, &ty).with_context(|| format!("{name}: function `{function}`"))?;
        let link = Arc::new(link.clone());
        let registry = registry.clone();
        let function = Arc::new(function);
        instance.func_new_async(&function.clone(), move |_caller, _ty, params, results| {
            let (link, registry, function) = (link.clone(), registry.clone(), function.clone());
            Box::new(async move {
                results[0] = match call(&registry, &link, &function, params).await {
                    Ok(result) => result,
                    Err(err) => {
                        tracing::warn!(cause = %format!("{err:#}"), from = %link.from, to = %link.to, function = %function, "synchronous call failed");
                        unavailable(&err)
                    }
                };
                Ok(())
            })
        })?;
    }
    Ok(())
}

fn exported_functions(
    engine: &Engine,
    callee: &Component,
    interface: &str,
) -> anyhow::Result<Vec<(String, ComponentFunc)>> {
    let ty = callee.component_type();
    let exported = ty.exports(engine).find(|(name, _)| *name == interface);
    let Some(ComponentItem::ComponentInstance(instance)) = exported.map(|(_, export)| export.ty) else {
        bail!("it does not export `{interface}`");
    };
    Ok(instance
        .exports(engine)
        .filter_map(|(name, item)| match item.ty {
            ComponentItem::ComponentFunc(func) => Some((name.to_string(), func)),
            _ => None,
        })
        .collect())
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

async fn call(registry: &Registry, link: &Link, function: &str, params: &[Val]) -> anyhow::Result<Val> {
    let callee = registry.get(&link.to).ok_or(NotRunning)?;
    let invocation = async {
        let mut store = callee.store();
        let instance = callee.instantiate(&mut store).await?;
        let component = callee.component();
        let interface = component
            .get_export_index(None, &link.interface)
            .context("interface not exported")?;
        let index = component
            .get_export_index(Some(&interface), function)
            .context("function not exported")?;
        let func = instance.get_func(&mut store, index).context("function not exported")?;
        let mut results = [Val::Bool(false)];
        func.call_async(&mut store, params, &mut results).await?;
        callee.finish(&mut store, true)?;
        let [result] = results;
        Ok(result)
    };
    match tokio::time::timeout(link.timeout(), invocation).await {
        Ok(result) => result,
        Err(_) => Err(anyhow!(DeadlineExceeded)).with_context(|| format!("no answer within {} ms", link.timeout_ms)),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the callee is not running")]
struct NotRunning;

/// `err(unavailable(reason))`, the value a caller gets for a failed call.
fn unavailable(err: &anyhow::Error) -> Val {
    // The details are in the log; the caller learns only what kind of failure.
    let reason = if DeadlineExceeded::caused(err) {
        "timed out"
    } else if err.is::<NotRunning>() {
        "not running"
    } else {
        "failed"
    };
    let error = Val::Variant("unavailable".into(), Some(Box::new(Val::String(reason.into()))));
    Val::Result(Err(Some(Box::new(error))))
}
