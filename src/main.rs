fn main() -> std::process::ExitCode {
    inlet::cli::main()
}
