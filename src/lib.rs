//! Inlet: an inbound messaging webhook gateway.
//!
//! Layout: `config` reads the TOML contract; `domain` holds the normalized
//! message and its ids; `providers` turns each provider's raw request into
//! verified domain values (pure, no I/O); `store` owns every byte on disk
//! behind the `Store` trait; `pipeline` runs jobs in the background;
//! `http` is the only layer that knows status codes; `app` wires them;
//! `cli` and `telemetry` are the edges. See ARCHITECTURE.md.

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod pipeline;
pub mod priority;
pub mod providers;
pub mod store;
pub mod telemetry;
