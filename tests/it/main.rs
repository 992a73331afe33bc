//! The one integration-test binary: each module starts the real `inlet`
//! binary on a random port with a fresh data dir and talks HTTP to it.

mod cli;
mod conversations;
mod durability;
mod errors;
mod helpers;
mod ingest;
mod llm;
mod ops;
mod pipeline;
mod providers;
