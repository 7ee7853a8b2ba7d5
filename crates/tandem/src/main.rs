//! The `tandem` binary: command line, configuration loading, runtime, signals and exit codes.
//! Everything else lives in the library crates; this file only wires them to the process.
//!
//! Exit codes: the supervised app's code when there is one, else 0 after a clean drain;
//! 64 (`EX_USAGE`) for configuration errors; 1 for start-up failures such as a port in use.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tandem_app::{App, AppCommand, Binds, RunOptions, Signal};
use tandem_config::{Address, Config};

mod logs_status;

// A proxy allocates and frees many small buffers per request; mimalloc's thread-local free lists
// cost less CPU per request than glibc's malloc here (see docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tandem: one sidecar for traffic, resilience, security, telemetry and logs.
#[derive(Parser, Debug)]
#[command(name = "tandem", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sidecar (and the app after `--`, supervised).
    ///
    /// Without `-c` it runs the embedded default: inbound 0.0.0.0:7080 -> app 127.0.0.1:8080,
    /// outbound forward proxy 127.0.0.1:7001, admin 127.0.0.1:7901.
    Run(RunArgs),
    /// Check a configuration file: exit 0 when valid, else list every error (file, line, key, fix).
    Check {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// List what the etcd service registry holds (the file's `etcd` section says where).
    Services {
        /// The configuration file (its `etcd` section).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Only this service's instances.
        service: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the embedded default configuration or the JSON Schema of the file format.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Development certificates for mTLS: a CA, and workload certificates with SPIFFE IDs.
    Certs {
        #[command(subcommand)]
        what: CertsCommand,
    },
    /// Log shipping of a running Tandem (through its admin API).
    Logs {
        #[command(subcommand)]
        what: LogsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum LogsCommand {
    /// Each source and file (offsets, lag), each sink (state, queue, last error, deliveries),
    /// the checkpoint and the memory budget, from the admin API's `GET /logs`.
    Status {
        /// The running Tandem's configuration file (its `admin.address`); the embedded
        /// default's when absent and no --admin is given.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The admin API's address (`host:port` or `unix:/path.sock`), instead of the file's.
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// The JSON document as served, instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Create a development CA for a SPIFFE trust domain (ca.pem, ca-key.pem).
    Init {
        /// The trust domain, e.g. `dev.local`.
        #[arg(long, value_name = "DOMAIN")]
        trust_domain: String,
        /// Directory to write the CA to.
        #[arg(long, value_name = "DIR", default_value = "tandem-ca")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = 3650)]
        days: u32,
    },
    /// Issue a workload certificate (cert.pem, key.pem, and the CA as ca.pem) from a CA.
    Issue {
        /// The workload's SPIFFE ID, e.g. `spiffe://dev.local/ns/shop/sa/cart`.
        #[arg(long, value_name = "SPIFFE_ID")]
        identity: Option<String>,
        /// A DNS name for the certificate (repeatable).
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// The CA directory (from `tandem certs init`).
        #[arg(long, value_name = "DIR", default_value = "tandem-ca")]
        ca: PathBuf,
        /// Directory to write the workload's files to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = 90)]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the embedded default configuration (YAML).
    Default,
    /// Print the JSON Schema of the configuration file, for editors.
    Schema,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Configuration file; the embedded default when absent.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The app's port on 127.0.0.1 (the `app` upstream's endpoint).
    #[arg(long, env = "APP_PORT", value_name = "N", conflicts_with = "app")]
    app_port: Option<u16>,
    /// The app's address: `host:port` or `unix:/path.sock`.
    #[arg(long, value_name = "ADDR")]
    app: Option<String>,
    /// Address of the listener named `inbound`.
    #[arg(long, value_name = "ADDR")]
    inbound: Option<String>,
    /// Address of the listener named `outbound`.
    #[arg(long, value_name = "ADDR")]
    outbound: Option<String>,
    /// Address of the admin API.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Worker threads (default: one per CPU, one without listeners). 1 runs everything on one
    /// thread.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Log filter, e.g. `info`, `debug`, `tandem_proxy=trace` (also `TANDEM_LOG`).
    #[arg(
        long,
        env = "TANDEM_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    log: String,
    /// The app to start and supervise, after `--`.
    #[arg(last = true, value_name = "APP")]
    app_command: Vec<OsString>,
}

fn main() -> ExitCode {
    // The supervised app starts as Tandem re-executed with this first argument (see
    // `tandem_app::supervisor`); it never reaches the CLI.
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv
        .get(1)
        .is_some_and(|a| a == tandem_app::supervisor::EXEC_APP)
    {
        let code = tandem_app::supervisor::exec_app(&argv[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Config {
            what: ConfigCommand::Default,
        } => {
            print!("{}", tandem_config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Command::Config {
            what: ConfigCommand::Schema,
        } => {
            println!("{}", tandem_config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(args),
        Command::Certs { what } => certs(what),
        Command::Logs {
            what:
                LogsCommand::Status {
                    config,
                    admin,
                    json,
                },
        } => logs_status::run(config.as_deref(), admin.as_deref(), json),
        Command::Services {
            config,
            service,
            json,
        } => services(&config, service.as_deref(), json),
    }
}

fn certs(what: CertsCommand) -> ExitCode {
    let result = match what {
        CertsCommand::Init {
            trust_domain,
            out,
            days,
        } => tandem_tls::dev_ca::init(&out, &trust_domain, days).map(|ca| {
            println!(
                "created a development CA for spiffe://{trust_domain} in {}\n  trust bundle: {}\n  next: tandem certs issue --ca {} --identity spiffe://{trust_domain}/ns/NS/sa/SA --out DIR",
                out.display(),
                ca.display(),
                out.display()
            );
        }),
        CertsCommand::Issue {
            identity,
            dns,
            ca,
            out,
            days,
        } => tandem_tls::dev_ca::issue(&tandem_tls::dev_ca::IssueRequest {
            ca_dir: ca,
            out_dir: out.clone(),
            identity,
            dns,
            days,
        })
        .map(|cert| {
            println!(
                "issued {} (key.pem and the CA as ca.pem beside it)\n  config: tls: {{ cert: {}, key: {}, trust_bundle: {} }}",
                cert.display(),
                cert.display(),
                out.join("key.pem").display(),
                out.join("ca.pem").display()
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(tandem_tls::dev_ca::CaError::Input(e)) => {
            eprintln!("tandem certs: {e}");
            ExitCode::from(64)
        }
        Err(e) => {
            eprintln!("tandem certs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tandem services`: the registry's instances, one per line (or JSON).
fn services(path: &std::path::Path, service: Option<&str>, json: bool) -> ExitCode {
    let config = match tandem_config::load_file(path) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(64);
        }
    };
    let Some(etcd) = config.etcd.clone() else {
        eprintln!(
            "{}: no `etcd` section: add etcd: {{ endpoints: [http://127.0.0.1:2379] }}",
            path.display()
        );
        return ExitCode::from(64);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = match tandem_discovery::etcd::Client::new(&etcd) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandem: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listed = match rt.block_on(tandem_discovery::etcd::list(&client, &etcd.prefix, service)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tandem: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        let v: Vec<serde_json::Value> = listed
            .iter()
            .map(|l| match &l.instance {
                Ok(i) => serde_json::json!({
                    "service": l.service, "id": l.id, "lease": l.lease,
                    "address": i.address, "weight": i.weight, "zone": i.zone,
                    "identity": i.identity, "metadata": i.metadata,
                }),
                Err(e) => serde_json::json!({
                    "service": l.service, "id": l.id, "lease": l.lease, "error": e,
                }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<20} {:<24} {:<24} {:>6} {:<10} LEASE",
        "SERVICE", "ID", "ADDRESS", "WEIGHT", "ZONE"
    );
    for l in &listed {
        let lease = if l.lease == 0 {
            "-".to_owned()
        } else {
            format!("{:x}", l.lease)
        };
        match &l.instance {
            Ok(i) => println!(
                "{:<20} {:<24} {:<24} {:>6} {:<10} {lease}",
                l.service,
                l.id,
                i.address,
                i.weight,
                i.zone.as_deref().unwrap_or("-"),
            ),
            Err(e) => println!("{:<20} {:<24} unreadable: {e}", l.service, l.id),
        }
    }
    ExitCode::SUCCESS
}

fn check(path: &std::path::Path) -> ExitCode {
    // The pure check, then the file step: configured certificates exist, parse and match.
    let loaded = tandem_config::load_file(path).and_then(|c| {
        let mut problems: Vec<_> = tandem_tls::check::check_files(&c)
            .into_iter()
            .map(|p| tandem_config::environment_error(path, p.key, p.message, p.hint))
            .collect();
        if let Some(logs) = &c.logs {
            problems.extend(
                tandem_logship::sink::tls::check_files(logs)
                    .into_iter()
                    .map(|(key, message, fix)| {
                        tandem_config::environment_error(path, &key, message, fix)
                    }),
            );
        }
        if problems.is_empty() {
            Ok(c)
        } else {
            Err(tandem_config::ConfigErrors(problems))
        }
    });
    match loaded {
        Ok(c) => {
            let logs = c.logs.as_ref().map_or(String::new(), |l| {
                format!(
                    ", {} log sources, {} log sinks",
                    l.sources.len(),
                    l.sinks.len()
                )
            });
            println!(
                "{}: ok ({} listeners, {} upstreams{logs})",
                path.display(),
                c.listeners.len(),
                c.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("{errors}");
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::from(64)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    init_logging(&args.log);
    let config = match &args.config {
        Some(path) => match tandem_config::load_file(path) {
            Ok(c) => c,
            Err(errors) => {
                eprint!("{errors}");
                return ExitCode::from(64);
            }
        },
        None => tandem_config::default_config(),
    };
    let config = match apply_overrides(config, &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandem: {e:#}");
            return ExitCode::from(64);
        }
    };
    // Without listeners (log shipping, supervision, admin), the runtime only drives sink
    // requests and the admin endpoint: one thread does that, and a second worker would only
    // add its stack, its allocator caches and cross-thread wake-ups (1.1 MiB less peak RSS and
    // fewer context switches shipping logs, docs/benchmarks.md).
    let threads = args.threads.unwrap_or_else(|| {
        if config.listeners.is_empty() {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    });
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tandem: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let supervise = args.app_command.split_first().map(|(p, rest)| AppCommand {
        program: p.clone(),
        args: rest.to_vec(),
    });
    let code = runtime.block_on(async move {
        let binds = match Binds::bind(&config).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("tandem: {e}");
                return 1;
            }
        };
        let app = App::build(config, binds);
        let signals = match forward_signals(app.access_log_reopener()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tandem: cannot install signal handlers: {e}");
                return 1;
            }
        };
        app.run(RunOptions { supervise }, signals).await
    });
    // Exit codes are 0..=255 on Unix; the app's code passes through unchanged.
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Applies command-line addresses to the (default or file) config.
fn apply_overrides(mut config: Config, args: &RunArgs) -> anyhow::Result<Config> {
    let parse = |flag: &str, v: &str| -> anyhow::Result<Address> {
        v.parse::<Address>()
            .map_err(|e| anyhow::anyhow!("--{flag} {v}: {e}"))
    };
    for (flag, name, value) in [
        ("inbound", "inbound", &args.inbound),
        ("outbound", "outbound", &args.outbound),
    ] {
        if let Some(v) = value {
            let addr = parse(flag, v)?;
            let Some(l) = config.listeners.iter_mut().find(|l| l.name == name) else {
                bail!("--{flag}: the configuration has no listener named `{name}`");
            };
            l.address = addr;
        }
    }
    if let Some(v) = &args.admin {
        config.admin.address = parse("admin", v)?;
        if let Some((message, hint)) = config.admin.exposure_error() {
            bail!("--admin {v}: {message}\n  hint: {hint}");
        }
    }
    let app_addr = match (&args.app, args.app_port) {
        (Some(a), _) => Some(parse("app", a)?),
        (None, Some(p)) => Some(Address::Tcp(([127, 0, 0, 1], p).into())),
        (None, None) => None,
    };
    if let Some(addr) = app_addr {
        let name = config
            .app
            .as_ref()
            .map(|a| a.upstream.clone())
            .context("--app/--app-port: the configuration has no `app.upstream`")?;
        let Some(u) = config.upstreams.iter_mut().find(|u| u.name == name) else {
            bail!("--app: upstream `{name}` not found");
        };
        u.endpoints = vec![tandem_config::UpstreamEndpoint {
            address: addr,
            weight: 1,
            zone: None,
        }];
        u.discovery = tandem_config::Discovery::Static;
    }
    Ok(config)
}

/// SIGTERM and SIGINT go to the app as [`Signal`]s; SIGUSR1 reopens the access log file (after
/// logrotate renamed it) and is otherwise ignored rather than fatal.
fn forward_signals(
    reopen: Option<tandem_app::AccessLogReopen>,
) -> std::io::Result<tokio::sync::mpsc::Receiver<Signal>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                _ = term.recv() => Signal::Terminate,
                _ = int.recv() => Signal::Interrupt,
                _ = usr1.recv() => {
                    match &reopen {
                        Some(r) => r.reopen(),
                        None => tracing::info!("SIGUSR1: no access log file to reopen"),
                    }
                    continue;
                }
            };
            if tx.send(s).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
