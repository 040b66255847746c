//! The shared runtime checks (activation, idle exit, signals, single instance) against
//! the real virtnetworkd binary.

common::runtime_conformance_tests!("virtnetworkd", env!("CARGO_BIN_EXE_virtnetworkd"));
