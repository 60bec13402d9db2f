//! The binary: parse configuration → init logging → bind → serve → drain.
//! Exits 64 on bad configuration, 69 when the address cannot be bound.

use std::process::ExitCode;
use std::sync::Arc;

use log::{error, info, warn};
use openrouter_proxy::app::App;
use openrouter_proxy::config::cli::{self, Command};
use openrouter_proxy::config::env_file::{self, EnvFileReport};
use openrouter_proxy::config::{Config, KeySpec};
use openrouter_proxy::keys::state::{self, Persistence};
use openrouter_proxy::keys::KeyPool;
use openrouter_proxy::observe::logging::{self, plural};
use openrouter_proxy::server;

/// jemalloc with background purging: see the reason in `Cargo.toml` and the measurements in
/// docs/PERFORMANCE.md ("The allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let (env, env_file) = env_file::merged_environment(std::path::Path::new("."));
    match cli::parse(std::env::args().skip(1)) {
        Command::Run => run(&env, &env_file),
        Command::Help => {
            print!("{}", cli::help());
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("openrouter-proxy {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::HealthCheck => {
            if cli::health_check(&env) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::CheckConfig => check_config(&env, &env_file),
        Command::Unknown(arg) => {
            eprintln!("unknown argument {arg:?}; see --help");
            ExitCode::from(64)
        }
    }
}

/// `--check-config`: what would run, or every problem (exit 64); binds nothing.
fn check_config(
    env: &std::collections::HashMap<String, String>,
    env_file: &EnvFileReport,
) -> ExitCode {
    for (level, message) in env_file.messages() {
        eprintln!("{level}: {message}");
    }
    match Config::from_lookup(|name| env.get(name).cloned()) {
        Ok(config) => {
            print!("{}", cli::summary(&config));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("{errors}");
            ExitCode::from(64)
        }
    }
}

fn run(env: &std::collections::HashMap<String, String>, env_file: &EnvFileReport) -> ExitCode {
    logging::init(env);
    env_file.log();
    let config = match Config::from_lookup(|name| env.get(name).cloned()) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(64);
        }
    };
    // This thread accepts connections and runs the background work (state file, probes,
    // Redis merges); requests are served on one worker thread per core (server::workers).
    let runtime = server::workers::runtime().expect("the tokio runtime starts");
    runtime.block_on(serve(config))
}

/// Binds, serves until a signal, then drains and writes the state one last time.
async fn serve(config: Config) -> ExitCode {
    let app = App::new(config);
    log_keys(&app.config.keys, &app.keys());
    let state_file = app.config.state_file.clone();
    // Read before the port is open: nothing is served from state not yet restored.
    if let Some(path) = &state_file {
        if let Err(why) = state::check_writable(path) {
            warn!("{why}");
            app.state_kept
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let fleet = state::load(path, &app);
        if let Some(shared) = &app.shared {
            let (replica, replicas) = fleet.map(|f| (f.replica, f.replicas)).unzip();
            shared.remember(replica, replicas);
        }
    }
    // With REDIS_URL: the fleet's counts before the first request (bounded by REDIS_TIMEOUT_MS).
    openrouter_proxy::shared::start(&app).await;
    let Some(listener) = bind(&app.config) else {
        return ExitCode::from(69);
    };
    openrouter_proxy::keys::probe::spawn(&app);
    let flusher = state_file.clone().map(|path| {
        let (app, interval) = (Arc::clone(&app), app.config.state_flush_interval);
        tokio::spawn(async move { Persistence::new(app, path).run(interval).await })
    });
    flush_on_other_signals(&app);
    server::serve(listener, Arc::clone(&app), first_signal(&app)).await;
    if let Some(flusher) = flusher {
        flusher.abort();
    }
    if let Some(path) = state_file {
        Persistence::new(app, path).flush().await;
    }
    ExitCode::SUCCESS
}

/// One line per key, so a list split the wrong way is visible at once; a key that does
/// not look like an OpenRouter key is worth a warning, not a refusal.
fn log_keys(specs: &[KeySpec], pool: &KeyPool) {
    for (index, (spec, key)) in specs.iter().zip(pool.keys()).enumerate() {
        let account = pool.account_of(index);
        info!(
            "key {}: account {}, daily free-model limit {} ({})",
            key.id,
            pool.account_id(key.account()),
            account.daily_limit(),
            account.limit_source()
        );
        if !spec.secret.starts_with("sk-or-") {
            warn!(
                "key {} does not start with sk-or-, as OpenRouter keys do; is it the right value?",
                key.id
            );
        }
    }
}

/// The listening socket, announced with where it forwards; `None` (logged) if it cannot be bound.
fn bind(config: &Config) -> Option<tokio::net::TcpListener> {
    let listener = match listen(config.listen) {
        Ok(listener) => listener,
        Err(err) => {
            error!("cannot listen on {}: {err}", config.listen);
            return None;
        }
    };
    // The bound address, not the configured one: with port 0 the OS picks it (tests read it here).
    let bound = listener.local_addr().unwrap_or(config.listen);
    info!(
        "listening on {bound} with {}, forwarding to {}://{}{}, daily reset at midnight {}",
        plural(config.keys.len(), "key"),
        config.upstream.scheme,
        config.upstream.authority,
        config.upstream.path,
        config.timezone_name
    );
    if !bound.ip().is_loopback() {
        warn!(
            "listening on {bound}: plain HTTP on every network this host is on; put TLS in front (see docs/operations.md, \"Network exposure and TLS\"), or set UVICORN_HOST=127.0.0.1 when the agents run here"
        );
    }
    Some(listener)
}

/// Connections the kernel may queue before they are accepted: a burst of agents connecting
/// at once should not wait for a SYN retry (the usual default of 128 made 127 of 500 wait 1 s).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on the first SIGTERM or SIGINT; a second one writes the state and exits 1 at once.
fn first_signal(app: &Arc<App>) -> impl std::future::Future<Output = ()> {
    let (first, shutdown) = tokio::sync::oneshot::channel::<()>();
    let app = Arc::clone(app);
    // Registered once, before the first signal: a second signal arriving while the
    // first is handled is queued on the same streams, never missed.
    let mut signals = TerminationSignals::new();
    tokio::spawn(async move {
        signals.recv().await;
        let _ = first.send(());
        signals.recv().await;
        warn!("second signal: exiting now");
        if let Some(path) = &app.config.state_file {
            let _ = state::write_atomic(path, &state::render(&app));
        }
        // The request lines the workers hold are written first: every request that ended
        // is in the log.
        server::workers::flush_logs_and_stop(std::time::Duration::from_millis(500));
        std::process::exit(1);
    });
    async {
        let _ = shutdown.await;
    }
}

/// SIGHUP (which supervisors and closing terminals send), SIGUSR1 and SIGUSR2 would kill
/// the process by default. SIGHUP re-reads the key list, then each writes the state file.
fn flush_on_other_signals(app: &Arc<App>) {
    use tokio::signal::unix::{signal, SignalKind};
    for (kind, name) in [
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
    ] {
        let Ok(mut stream) = signal(kind) else {
            warn!("cannot listen for {name}");
            continue;
        };
        let app = Arc::clone(app);
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                info!("{name} received");
                if kind == SignalKind::hangup() {
                    reload_key_list(&app);
                }
                let Some(path) = app.config.state_file.clone() else {
                    continue;
                };
                info!("writing the state file");
                // A fresh writer has written nothing yet, so it writes (and warns if it cannot).
                Persistence::new(Arc::clone(&app), path).flush().await;
            }
        });
    }
}

/// Reads `.env`, the environment and `CONFIG_FILE` again and puts the new key list and
/// clients in force, carrying over what was known about the keys and clients that stay; a
/// configuration with errors is refused as a whole (every error logged, keys masked) and
/// the running one kept. Other settings need a restart.
fn reload_key_list(app: &App) {
    let (env, env_file) = env_file::merged_environment(std::path::Path::new("."));
    env_file.log();
    if std::env::var_os("OPENROUTER_KEYS").is_some() {
        warn!("OPENROUTER_KEYS is set in the process environment, which is fixed at start: the reload sees the same key list (put it in .env to change it without a restart)");
    }
    let config = match Config::from_lookup(|name| env.get(name).cloned()) {
        Ok(config) => config,
        Err(errors) => {
            for problem in &errors.0 {
                error!("reload refused: {problem}");
            }
            warn!("the key list and clients in force are kept");
            return;
        }
    };
    let (pool, stayed) = app.reload_keys(config.keys.clone());
    if let Some(shared) = &app.shared {
        shared.reloaded(&pool);
    }
    info!(
        "reloaded the key list: {}, {stayed} kept their counts and blocks",
        plural(pool.keys().len(), "key")
    );
    let clients_stayed = app.reload_config_file(&config);
    info!(
        "reloaded CONFIG_FILE: {}, {clients_stayed} kept their counts; {} model aliases",
        plural(config.clients.len(), "client"),
        config.aliases.len()
    );
    log_keys(&config.keys, &pool);
}

/// SIGTERM and SIGINT, listened to for the life of the process.
struct TerminationSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl TerminationSignals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        TerminationSignals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler installs"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler installs"),
        }
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM received"),
            _ = self.int.recv() => info!("SIGINT received"),
        }
    }
}
