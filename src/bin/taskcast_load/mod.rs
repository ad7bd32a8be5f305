//! Modules of the `taskcast-load` binary.

pub mod args;
pub mod engine;
pub mod http;
pub mod roles;
pub mod serverproc;
pub mod soak;
pub mod stats;
pub mod sysinfo;
pub mod verdict;
pub mod ws;
