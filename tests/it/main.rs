//! The one integration-test binary: each module starts the real `inlet`
//! binary on a random port with a fresh data dir and talks HTTP to it.

mod durability;
mod errors;
mod cli;
mod conversations;
mod helpers;
mod ingest;
mod ops;
