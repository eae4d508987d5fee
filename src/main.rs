fn main() -> std::process::ExitCode {
    segclust::cli::main()
}
