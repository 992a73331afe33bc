//! The `inlet` binary: everything lives in the library; see `cli`.

/// mimalloc instead of glibc malloc: allocation showed at the top of the
/// ingest profile under load (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    inlet::cli::main()
}
