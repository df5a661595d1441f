//! vigie: the content filter of a school's internet gateway — DNS filter and
//! HTTP/HTTPS forward proxy in one process, deciding per person and profile and
//! recording every decision.
//!
//! Every request takes one path: Identify (`identity`) → Classify (`lists`) →
//! Decide (`policy`) → Act (`dns`, `proxy`) → Record (`audit`). All policy state
//! lives in one immutable `snapshot::Snapshot`, swapped atomically on reload.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod config;
pub mod dns;
pub mod i18n;
pub mod identity;
pub mod lists;
pub mod metrics;
pub mod per_client;
pub mod policy;
pub mod privileges;
pub mod proxy;
pub mod snapshot;
pub mod tls_roots;
pub mod update;
pub mod web;
