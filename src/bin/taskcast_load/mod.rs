//! Modules of the `taskcast-load` binary.

pub mod args;
pub mod engine;
pub mod http;
pub mod stats;
pub mod sysinfo;
pub mod ws;
