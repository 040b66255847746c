use std::process::ExitCode;

fn main() -> ExitCode {
    common::runtime::main("virtnetworkd", virtnetworkd::start)
}
