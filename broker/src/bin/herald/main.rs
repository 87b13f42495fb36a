//! The `herald` binary: parse flags, load configuration, set up logging, serve.

use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "jemalloc")]
mod allocator;
mod serve;

use clap::{Parser, Subcommand};
use herald::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// Herald: realtime events from NATS, Kafka and HTTP to WebSocket clients.
///
/// With no arguments Herald serves on 127.0.0.1:8080 with no bridges and auth off:
/// the dashboard is at http://127.0.0.1:8080/ and WebSocket clients connect to /ws.
/// Any configuration key can be set with HERALD_<SECTION>__<KEY>, e.g.
/// HERALD_SESSION__QUEUE_MAX_BYTES=262144.
#[derive(Debug, Parser)]
#[command(name = "herald", version = env!("HERALD_VERSION"), about, long_about)]
struct Cli {
    /// TOML configuration file (unknown keys are errors).
    #[arg(long, short, env = "HERALD_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to listen on; overrides `server.listen`.
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and print the effective result, secrets masked.
    CheckConfig,
    /// Print shell completions for `herald` (e.g. `herald completions bash >
    /// /etc/bash_completion.d/herald`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn load(cli: &Cli) -> Result<Config, herald::config::ConfigError> {
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(listen) = &cli.listen {
        config.server.listen = listen.clone();
        // Name the flag, not the file, when the flag is what is wrong.
        config
            .listen_addr()
            .map_err(|_| herald::config::ConfigError::Flag {
                flag: "--listen",
                message: format!(
                    "`{listen}` is not valid: expected host:port, e.g. 127.0.0.1:8080"
                ),
            })?;
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Completions { shell }) = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "herald", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    // What start-up builds from files (JWT key, TLS certificate, bridge clients),
    // before logging starts: its errors are configuration errors like the others.
    let components = match herald::Components::build(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        // Servers the configuration relies on (JetStream for cluster history).
        match actix_web::rt::System::new().block_on(components.check_servers(&config)) {
            Ok(notes) => {
                for note in notes {
                    eprintln!("herald: {note}");
                }
            }
            Err(e) => {
                eprintln!("herald: {e}");
                return ExitCode::from(2);
            }
        }
        print!("{}", config.to_masked_toml());
        eprintln!("herald: configuration is valid");
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    #[cfg(feature = "jemalloc")]
    allocator::start();
    let result = actix_web::rt::System::new().block_on(serve::run(config, components));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
