//! One component's instances: the engine that runs them, the slot a
//! component keeps across versions, the state of one invocation, memory
//! budgets, and the registry of loaded versions.

pub mod engine;
pub mod invocation;
pub mod memory;
pub mod registry;
pub mod slot;
