//! End-to-end tests: the real `prefork` binary and the real `demo` example, on 127.0.0.1, with
//! real signals. One test binary, so the suite links once.

mod clients;
mod connections;
mod deploy;
mod deploy_files;
mod docs;
mod drain;
mod frames;
mod h2;
mod h2_floods;
mod h2_writes;
mod http;
mod large_files;
mod layers;
mod limits;
mod load;
mod logs;
mod memory;
mod metrics;
mod parking;
mod rolling;
mod run;
mod serve;
mod stalls;
mod static_cache;
mod static_root;
mod storms;
mod supervise;
mod tls;
mod upgrade;

// Shared with the benchmark; `pub` so that what only the benchmark uses is not dead code here.
#[path = "../support/mod.rs"]
pub mod support;
