//! `kiln`: a thin client over the REST api (and the stream gateway for `--follow` when its
//! URL is configured). Server URL and token come from flags or `KILN_URL` / `KILN_TOKEN`.

mod client;
mod commands;
mod ws;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            ExitCode::from(2)
        }
    }
}
