//! The `prefork` binary: the library's command line serving the built-in static file app.

use std::process::ExitCode;

fn main() -> ExitCode {
    prefork::main(|worker| prefork::app::static_files(worker.config().root_dir()))
}
