use std::process::ExitCode;

fn main() -> ExitCode {
    common::runtime::main("virtqemud", virtqemud::start)
}
