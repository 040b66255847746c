//! The shared runtime checks (activation, idle exit, signals, single instance) against
//! the real virtnodedevd binary.

common::runtime_conformance_tests!("virtnodedevd", env!("CARGO_BIN_EXE_virtnodedevd"));
