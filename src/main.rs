//! The `steward` binary: flags → Config → run; errors → a message and an exit code.

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use steward::config::Subcommand;

/// glibc gives threads their own malloc arenas, up to eight per core, each keeping what it
/// once held: with a thread per process that is most of a node's resident memory after a
/// burst. Two arenas hold steward's light contention (measured: 15 MB → 9 MB after a
/// 100,000-message intake, no loss of throughput). And big buffers (the inbox reads a
/// megabyte at a time) are mapped and unmapped on their own, rather than left in an arena
/// once freed: glibc would otherwise raise that threshold as they come and go. A batch's
/// buffers (its bytes off the wire, its envelopes decoded) are above it too, mapped fresh
/// and faulted in page by page for every batch: 15% of a receiver's CPU in a stream of
/// events. Kept below it (a threshold of 640 KiB or 1 MiB), the receiver spent that much
/// less (6.2 → 5.3 µs an event over five pairs), but held 2 to 3 MB more (11.3–12.8 MB after 1,000,000 events
/// against 9.6–9.9, session 35): a node's memory is the scarcer.
fn fewer_malloc_arenas() {
    use steward::sys::{mallopt, Malloc};
    mallopt(Malloc::ArenaMax(2));
    mallopt(Malloc::MmapThreshold(256 * 1024));
}

fn main() -> ExitCode {
    fewer_malloc_arenas();
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
    let mut flags = match <steward::config::Flags as argh::FromArgs>::from_args(&[program], &refs) {
        Ok(f) => f,
        Err(early) => {
            let text = steward::config::seed_help(&early.output);
            return match early.status {
                Ok(()) => {
                    // Not println!: a closed pipe (`steward --help | head`) is not a crash.
                    let _ = writeln!(std::io::stdout(), "{text}");
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprintln!("{text}");
                    if let Some(hint) = steward::config::misplaced_flag(&early.output) {
                        eprintln!("{hint}");
                    }
                    ExitCode::from(2)
                }
            };
        }
    };
    if flags.version {
        let _ = writeln!(std::io::stdout(), "steward {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    match flags.command.take() {
        Some(Subcommand::Demo(demo)) => {
            return match steward::demo::run(demo.folder) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("steward demo: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(command @ (Subcommand::Send(_) | Subcommand::Status(_) | Subcommand::Keys(_))) => {
            return control_client(flags, command)
        }
        None => {}
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

/// `steward send`, `steward status` and `steward keys`: find the agent's data folder the way the agent
/// does (flags, environment, config file; on an installed node, /etc/steward/steward.toml).
fn control_client(mut flags: steward::config::Flags, command: Subcommand) -> ExitCode {
    const INSTALLED_CONFIG: &str = "/etc/steward/steward.toml";
    if flags.config.is_none()
        && std::env::var_os("STEWARD_CONFIG").is_none()
        && std::path::Path::new(INSTALLED_CONFIG).exists()
    {
        flags.config = Some(INSTALLED_CONFIG.to_string());
    }
    let config = match steward::config::Config::from_flags(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("steward: {e}");
            return ExitCode::from(steward::control_client::EXIT_USAGE);
        }
    };
    let socket = steward::files::DataFolder::new(config.data_folder.clone()).socket();
    let result = match command {
        Subcommand::Keys(k) => {
            steward::control_client::keys(&config.node, &config.data_folder, k.action)
        }
        Subcommand::Send(s) => steward::control_client::send(
            &socket,
            steward::control_client::SendRequest {
                to: s.to,
                method: s.method,
                kind: s.kind,
                timeout: s.timeout,
                retries: s.retries,
                ttl: s.ttl,
                wait: !s.no_wait,
                data: s.data,
                as_line: false,
            },
        ),
        _ => steward::control_client::status(&socket),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err((code, e)) => {
            eprintln!("steward: {e}");
            ExitCode::from(code)
        }
    }
}
