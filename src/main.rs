//! The `prefork` binary: the library's command line serving the built-in static file app.

use std::process::ExitCode;

fn main() -> ExitCode {
    prefork::main(|worker| {
        // A worker that cannot open the root cannot serve: the panic is caught, logged, and
        // the worker exits as failing to boot, as at any other factory failure.
        prefork::app::static_files(worker.config()).unwrap_or_else(|e| {
            panic!(
                "cannot open the root directory {}: {e}",
                worker.config().root_dir().display()
            )
        })
    })
}

/// The one C math function the program calls (tokio's multi-thread scheduler weighs task poll
/// times with `powf`), defined here from the `libm` crate so that the C library's `libm.so`
/// is never loaded. Loading it costs every process, the master included, about 400 KiB of
/// resident memory: the dynamic loader runs its hundred-odd CPU-dispatch resolvers, touching
/// pages all over its code. The definition is in the binary and not in the library so that
/// applications built on the library keep whichever `pow` they link.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}
