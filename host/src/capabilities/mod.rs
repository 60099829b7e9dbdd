//! What a component may import beyond WASI: its database (`sql`) and its
//! outbox (`events`).

pub mod events;
pub mod sql;
