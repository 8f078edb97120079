//! The `wazuh-misp` command: the daemon and its helpers.

use clap::{Parser, Subcommand};
use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{reload, EnvFilter};
use wazuh_misp::config::{self, Config, LogFormat, DEFAULT_CONFIG_PATH};
#[cfg(feature = "demo")]
use wazuh_misp::demo;
use wazuh_misp::lookup::MispClient;
use wazuh_misp::runtime::Daemon;
use wazuh_misp::{check, enrich_lines, service};

#[derive(Parser)]
#[command(
    name = "wazuh-misp",
    version,
    about = "Enrich Wazuh alerts with MISP threat intelligence"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: follow alerts.json and write enriched events to the Wazuh queue.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate the configuration and the environment it points at.
    CheckConfig {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Enrich alert JSON lines from FILE (or - for stdin) and print each event as one JSON line.
    Enrich {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(default_value = "-")]
        file: String,
    },
    /// The local mirror of MISP's indicators.
    Mirror {
        #[command(subcommand)]
        action: MirrorCommand,
    },
    /// For each IP, domain, URL or file hash: the mirror's match and the misp_data an alert naming it would carry.
    Lookup {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(required = true, value_name = "OBSERVABLE")]
        ips: Vec<String>,
    },
    /// Mark VALUE as a false positive: never enriched again (the running daemon picks it up within seconds), and with misp.sightings on, a false-positive sighting to MISP for each attribute that matches it.
    FalsePositive {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Why (kept in the list).
        #[arg(long, conflicts_with_all = ["remove", "list"])]
        reason: Option<String>,
        /// Take VALUE off the list instead.
        #[arg(long, conflicts_with = "list")]
        remove: bool,
        /// Print the list (one JSON line per value) instead.
        #[arg(long)]
        list: bool,
        #[arg(value_name = "VALUE", required_unless_present = "list")]
        value: Option<String>,
    },
    /// Hunt the ledger of past observables against the whole mirror now, and print the retro events (--send sends them to Wazuh).
    Hunt {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Only values seen within this long (7d, 12h, 30m, or seconds). Default: retro.window_days.
        #[arg(long)]
        since: Option<String>,
        /// Send the events to the queue socket and record them as hunted.
        #[arg(long)]
        send: bool,
        /// At most this many events.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// Run the whole pipeline offline against a built-in MISP simulator and sample alerts.
    #[cfg(feature = "demo")]
    Demo,
    /// Drop-in for integratord's custom integrations: enrich one alert file and exit.
    Integratord {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The alert file integratord wrote.
        alert_file: PathBuf,
        /// `<api_key>` of the `<integration>` block (overrides the config).
        api_key: Option<String>,
        /// `<hook_url>` of the `<integration>` block: the MISP url (overrides the config).
        hook_url: Option<String>,
        /// Further arguments integratord may pass; ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
}

#[derive(Subcommand)]
enum MirrorCommand {
    /// Print the mirror's state on disk as one JSON object (works while the daemon runs).
    Status {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

type LogHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Logs go to stderr (journald captures it). The level can be changed by a
/// reload through the returned handle.
fn init_logging(level: &str, format: LogFormat) -> LogHandle {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // journald and log files store escape codes raw: colour a terminal only.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = || {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    };
    match format {
        LogFormat::Text => registry.with(text()).init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journald) => registry
                .with(journald.with_syslog_identifier("wazuh-misp".into()))
                .init(),
            Err(e) => {
                registry.with(text()).init();
                tracing::warn!(error = %e, "journald is not reachable; logging text to stderr instead");
            }
        },
    }
    handle
}

fn load_or_report(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("wazuh-misp: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(wazuh_misp::config::runtime_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wazuh-misp: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run { config } => rt.block_on(run(&config)),
        Command::CheckConfig { config } => rt.block_on(check::run(&config, &mut std::io::stdout())),
        Command::Enrich { config, file } => rt.block_on(enrich(&config, &file)),
        Command::Mirror {
            action: MirrorCommand::Status { config },
        } => mirror_status(&config),
        Command::Lookup { config, ips } => rt.block_on(lookup(&config, &ips)),
        Command::FalsePositive {
            config,
            reason,
            remove,
            list,
            value,
        } => {
            use wazuh_misp::commands::feedback::FalsePositive;
            let what = match (list, remove, value) {
                (true, _, _) => FalsePositive::List,
                (false, true, Some(value)) => FalsePositive::Remove { value },
                (false, false, Some(value)) => FalsePositive::Add { value, reason },
                (false, _, None) => unreachable!("clap requires VALUE without --list"),
            };
            rt.block_on(false_positive(&config, what))
        }
        Command::Hunt {
            config,
            since,
            send,
            limit,
        } => rt.block_on(hunt(&config, since.as_deref(), send, limit)),
        #[cfg(feature = "demo")]
        Command::Demo => rt.block_on(run_demo()),
        Command::Integratord {
            config,
            alert_file,
            api_key,
            hook_url,
            rest: _,
        } => rt.block_on(integratord(
            &config,
            &alert_file,
            api_key.as_deref(),
            hook_url.as_deref(),
        )),
    }
}

async fn run(path: &Path) -> ExitCode {
    let cfg = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let log = init_logging(&cfg.log.level, *cfg.log.format);
    let client = match build_client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let mut signals = match signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        alerts = %cfg.input.alerts_file.display(),
        misp = %config::redact_url(&cfg.misp.url),
        socket = %cfg.output.queue_socket.display(),
        "starting"
    );
    if !cfg.metrics.listen.is_empty() {
        let addr = cfg.metrics.listen.parse().expect("validated at load");
        if let Err(e) = wazuh_misp::metrics::serve(addr) {
            tracing::error!("{e:#}");
            return ExitCode::from(2);
        }
    }
    let mut daemon = match Daemon::start(cfg, client) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    service::ready(&daemon.stats.summary());
    let stats_tick = |secs: u64| {
        let every = Duration::from_secs(secs.max(1));
        tokio::time::interval_at(tokio::time::Instant::now() + every, every)
    };
    let mut stats_every = daemon.config().log.stats_interval_secs;
    let mut stats = stats_tick(stats_every);
    // The watchdog ping doubles as the STATUS= refresh. It stops with the
    // loop, so a dead component also stops the pings.
    let mut heartbeat = tokio::time::interval(
        service::watchdog_interval()
            .unwrap_or(Duration::from_secs(10))
            .min(Duration::from_secs(10)),
    );
    let mut exit = ExitCode::SUCCESS;
    loop {
        tokio::select! {
            sig = signals.next() => match sig {
                Some(SIGHUP) => {
                    service::reloading();
                    reload(&mut daemon, path, &log);
                    if daemon.config().log.stats_interval_secs != stats_every {
                        stats_every = daemon.config().log.stats_interval_secs;
                        stats = stats_tick(stats_every);
                    }
                    service::ready(&daemon.stats.summary());
                }
                Some(_) | None => break,
            },
            death = daemon.died() => {
                tracing::error!(
                    component = death.component,
                    "{death}; stopping so that systemd restarts the daemon from the bookmark"
                );
                exit = ExitCode::FAILURE;
                break;
            }
            _ = stats.tick(), if stats_every > 0 => tracing::info!(stats = %daemon.stats.summary(), "stats"),
            _ = heartbeat.tick() => {
                service::watchdog();
                service::status(&daemon.stats.summary());
            }
        }
    }
    service::stopping();
    tracing::info!("stopping: finishing in-flight alerts");
    // systemd's default stop timeout is 90 s, ours is 20 s: leave a margin
    // for saving state after the grace period.
    daemon.shutdown(Duration::from_secs(9)).await;
    exit
}

fn build_client(cfg: &Config) -> anyhow::Result<MispClient> {
    let key = cfg.resolve_api_key()?;
    MispClient::new(&cfg.misp, &key)
}

/// SIGHUP: re-read the config; an invalid one leaves the old in force.
fn reload(daemon: &mut Daemon, path: &Path, log: &LogHandle) {
    tracing::info!(config = %path.display(), "SIGHUP: reloading configuration");
    let new = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(key = %e.key, reason = %e.reason, "reload refused; the running configuration stays in force");
            return;
        }
    };
    let client = match build_client(&new) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused; the running configuration stays in force: {e:#}");
            return;
        }
    };
    if new.log.level != daemon.config().log.level {
        if let Ok(f) = EnvFilter::try_new(&new.log.level) {
            let _ = log.modify(|current| *current = f);
        }
    }
    match daemon.reload(new, client) {
        Ok(changed) if changed.is_empty() => tracing::info!("reload: nothing changed"),
        Ok(changed) => {
            let keys = |applies| {
                changed
                    .iter()
                    .filter(|c| c.applies == applies)
                    .map(|c| c.key.as_str())
                    .collect::<Vec<_>>()
            };
            tracing::info!(
                keys = ?keys(config::Applies::Live),
                after_restart = ?keys(config::Applies::AfterRestart),
                "reload applied"
            );
        }
        Err(e) => {
            tracing::error!("reload refused; the running configuration stays in force: {e:#}")
        }
    }
}

async fn enrich(path: &Path, file: &str) -> ExitCode {
    let cfg = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(&cfg.log.level, *cfg.log.format);
    let client = match build_client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wazuh-misp: {e:#}");
            return ExitCode::from(2);
        }
    };
    let input: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(file) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!("wazuh-misp: cannot open {file}: {e}");
                return ExitCode::from(2);
            }
        }
    };
    match enrich_lines::run(&cfg, client, input, std::io::stdout().lock()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wazuh-misp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn mirror_status(path: &Path) -> ExitCode {
    let cfg = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match wazuh_misp::commands::mirror::status(&cfg) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wazuh-misp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn lookup(path: &Path, ips: &[String]) -> ExitCode {
    let cfg = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging("warn", LogFormat::Text);
    print_lines(wazuh_misp::commands::mirror::lookup(&cfg, ips).await)
}

fn print_lines(result: anyhow::Result<Vec<serde_json::Value>>) -> ExitCode {
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wazuh-misp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn false_positive(
    path: &Path,
    what: wazuh_misp::commands::feedback::FalsePositive,
) -> ExitCode {
    let cfg = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging("warn", LogFormat::Text);
    print_lines(wazuh_misp::commands::feedback::false_positive(&cfg, what).await)
}

async fn hunt(path: &Path, since: Option<&str>, send: bool, limit: usize) -> ExitCode {
    let cfg = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging("warn", LogFormat::Text);
    let since = match since {
        Some(s) => match wazuh_misp::commands::feedback::parse_since(s) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("wazuh-misp: {e}");
                return ExitCode::from(2);
            }
        },
        None => (*cfg.retro.window_days * 86400) as i64,
    };
    print_lines(wazuh_misp::commands::feedback::hunt(&cfg, since, send, limit).await)
}

async fn integratord(
    config: &Path,
    alert_file: &Path,
    api_key: Option<&str>,
    hook_url: Option<&str>,
) -> ExitCode {
    init_logging("warn", LogFormat::Text);
    match wazuh_misp::integratord::run(config, alert_file, api_key, hook_url).await {
        Ok(sent) => {
            tracing::info!(sent, "integratord: done");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wazuh-misp integratord: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "demo")]
async fn run_demo() -> ExitCode {
    init_logging("warn", LogFormat::Text);
    match demo::run_demo(demo::DEMO_ALERTS).await {
        Ok(outcome) => {
            let _ = demo::print(&outcome, &mut std::io::stdout().lock());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wazuh-misp demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
