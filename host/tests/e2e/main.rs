//! End-to-end tests: the real components in the real host, over HTTP.

mod harness;

mod api;
mod concurrency;
mod crash;
mod events;
mod flow;
mod framework;
mod guests;
mod hardening;
mod lifecycle;
mod resilience;
mod swap;
