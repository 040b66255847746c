fn main() -> std::process::ExitCode {
    virtproxyd::runtime::main()
}
