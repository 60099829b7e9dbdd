//! HTTP: the listener, the router that hands requests to components, the
//! `/admin` API, and the JSON errors of both.

pub mod admin;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod router;
pub mod server;
