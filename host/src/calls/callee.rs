//! Where a linked call goes. The policy, faults and retries of a link are
//! the same whoever answers; a [`Callee`] is the one who answers: a
//! component on this host ([`LocalCallee`]) or, later, one on another node.

use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use wasmtime::component::Val;

use super::NotRunning;
use crate::instance::registry::Registry;
use crate::store::StorageFull;

/// Answers the functions of one linked interface.
#[async_trait]
pub trait Callee: Send + Sync {
    /// One attempt at `function` with `params`: the callee's own
    /// `result<_, E>` value, or an error when it could not answer.
    async fn call(&self, function: &str, params: &[Val], request_id: Option<String>) -> anyhow::Result<Val>;
}

/// A component on this host: each call is a fresh instance in its own
/// store and transaction, of whatever version the registry holds then.
pub struct LocalCallee {
    registry: Arc<Registry>,
    name: String,
    interface: String,
}

impl LocalCallee {
    pub fn new(registry: Arc<Registry>, name: &str, interface: &str) -> LocalCallee {
        LocalCallee {
            registry,
            name: name.to_string(),
            interface: interface.to_string(),
        }
    }
}

#[async_trait]
impl Callee for LocalCallee {
    async fn call(&self, function: &str, params: &[Val], request_id: Option<String>) -> anyhow::Result<Val> {
        let callee = self.registry.get(&self.name).ok_or(NotRunning)?;
        let _instance = callee.slot.instances.acquire().await?;
        let mut store = callee.store();
        store.data_mut().request_id = request_id;
        store.data_mut().may_commit = true;
        let instance = callee.instantiate(&mut store).await?;
        let component = callee.component();
        let interface = component
            .get_export_index(None, &self.interface)
            .context("interface not exported")?;
        let index = component
            .get_export_index(Some(&interface), function)
            .context("function not exported")?;
        let func = instance.get_func(&mut store, index).context("function not exported")?;
        let mut results = [Val::Bool(false)];
        let called: anyhow::Result<()> = func
            .call_async(&mut store, params, &mut results)
            .await
            .map_err(Into::into);
        let [result] = results;
        // Every linked function returns `result<_, call-error>`: an error
        // leaves no trace (say, a payment inserted before its event failed).
        let ok = called.is_ok() && !matches!(result, Val::Result(Err(_)));
        let finished = called.and_then(|()| callee.finish(&mut store, ok));
        if store.data().storage_full && !ok {
            return Err(anyhow!(StorageFull));
        }
        finished?;
        Ok(result)
    }
}
