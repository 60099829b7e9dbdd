//! HTTP: the listener, the router that hands requests to components, the
//! `/admin` API, the web console, and the JSON errors of both.

pub mod admin;
mod cluster;
pub mod console;
pub mod error;
mod forward;
pub mod gateway;
mod idle;
pub mod metrics;
pub mod router;
pub mod server;
