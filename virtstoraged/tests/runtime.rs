//! The shared runtime checks (activation, idle exit, signals, single instance) against
//! the real virtstoraged binary.

common::runtime_conformance_tests!("virtstoraged", env!("CARGO_BIN_EXE_virtstoraged"));
