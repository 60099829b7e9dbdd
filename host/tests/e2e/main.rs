//! End-to-end tests: the real components in the real host, over HTTP.

mod broker;
mod harness;

mod api;
mod auth;
mod concurrency;
mod console;
mod crash;
mod events;
mod flow;
mod framework;
mod guests;
mod hardening;
mod kafka;
mod lifecycle;
mod nodes;
mod polyglot;
mod resilience;
mod swap;
