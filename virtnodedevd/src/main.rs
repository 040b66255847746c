use std::process::ExitCode;

fn main() -> ExitCode {
    common::runtime::main("virtnodedevd", virtnodedevd::start)
}
