//! The bare application served by prefork: a `tower::service_fn` returning a fixed body, as in
//! hyper's own examples, so that the benchmark shows what prefork's process model costs apart
//! from what a framework (axum, in `examples/demo.rs`) costs.
//!
//! ```text
//! cargo run --release --example bare -- serve --workers 2 --bind 127.0.0.1:8000
//! ```
//!
//! `examples/baseline.rs --bare` serves the same service in one process.

use std::process::ExitCode;

#[path = "common/hello.rs"]
mod hello;

fn main() -> ExitCode {
    prefork::main(|_worker| tower::service_fn(hello::hello))
}
