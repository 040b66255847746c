//! The shared runtime checks (activation, idle exit, signals, single instance) against
//! the real virtqemud binary.

common::runtime_conformance_tests!("virtqemud", env!("CARGO_BIN_EXE_virtqemud"));
