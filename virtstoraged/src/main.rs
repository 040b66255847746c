use std::process::ExitCode;

fn main() -> ExitCode {
    common::runtime::main("virtstoraged", virtstoraged::start)
}
