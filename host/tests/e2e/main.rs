//! End-to-end tests: the real components in the real host, over HTTP.

mod harness;

mod api;
mod concurrency;
mod flow;
mod lifecycle;
