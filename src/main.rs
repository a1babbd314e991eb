//! The `steward` binary: flags → Config → run; errors → a message and an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().collect();
    let program = args.first().map(String::as_str).unwrap_or("steward");
    let normalized = match steward::config::normalize_args(&args[1..]) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("steward: {e}");
            return ExitCode::from(2);
        }
    };
    let refs: Vec<&str> = normalized.iter().map(String::as_str).collect();
    let flags = match <steward::config::Flags as argh::FromArgs>::from_args(&[program], &refs) {
        Ok(f) => f,
        Err(early) => {
            let text = steward::config::seed_help(&early.output);
            return match early.status {
                Ok(()) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprintln!("{text}");
                    ExitCode::from(2)
                }
            };
        }
    };
    if let Some(steward::config::Subcommand::Demo(demo)) = flags.command {
        return match steward::demo::run(demo.folder) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("steward demo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match steward::config::Config::from_flags(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("steward: {e}");
            return ExitCode::from(2);
        }
    };
    match steward::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steward: {e}");
            ExitCode::FAILURE
        }
    }
}
