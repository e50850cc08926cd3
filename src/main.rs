use clap::Parser;

use cdc_invalidator::cli::{self, Cli};

fn main() {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format, &cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            // Like every other start-up failure: a message and exit code 2, not a panic.
            eprintln!("error: starting the tokio runtime: {error}");
            std::process::exit(2);
        }
    };
    let code = match runtime.block_on(cli::execute(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            2
        }
    };
    std::process::exit(code);
}
