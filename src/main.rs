//! The binary: parse configuration → init logging → bind → serve → drain.
//! Exits 64 on bad configuration, 69 when the address cannot be bound.

use std::process::ExitCode;
use std::sync::Arc;

use log::{error, info, warn};
use openrouter_proxy::app::App;
use openrouter_proxy::config::cli::{self, Command};
use openrouter_proxy::config::env_file;
use openrouter_proxy::config::Config;
use openrouter_proxy::keys::state::{self, Persistence};
use openrouter_proxy::observe::logging;
use openrouter_proxy::server;

fn main() -> ExitCode {
    let env = env_file::merged_environment(std::path::Path::new("."));
    match cli::parse(std::env::args().skip(1)) {
        Command::Run => run(&env),
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
        Command::Unknown(arg) => {
            eprintln!("unknown argument {arg:?}; see --help");
            ExitCode::from(64)
        }
    }
}

fn run(env: &std::collections::HashMap<String, String>) -> ExitCode {
    logging::init(env);
    let config = match Config::from_lookup(|name| env.get(name).cloned()) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(64);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                error!("cannot listen on {}: {err}", config.listen);
                return ExitCode::from(69);
            }
        };
        // The bound address, not the configured one: with port 0 the OS picks it (tests read it here).
        let bound = listener.local_addr().unwrap_or(config.listen);
        info!(
            "listening on {bound} with {} keys, forwarding to {}://{}{}, daily reset at midnight {}",
            config.keys.len(),
            config.upstream.scheme,
            config.upstream.authority,
            config.upstream.path,
            config.timezone_name
        );
        let app = App::new(config);
        let state_file = app.config.state_file.clone();
        if let Some(path) = &state_file {
            state::load(path, &app.keys);
        }
        openrouter_proxy::keys::probe::spawn(&app);
        let flusher = state_file.clone().map(|path| {
            let (app, interval) = (Arc::clone(&app), app.config.state_flush_interval);
            tokio::spawn(async move { Persistence::new(app, path).run(interval).await })
        });
        let (first_signal, shutdown) = tokio::sync::oneshot::channel::<()>();
        let signalled = Arc::clone(&app);
        // Registered once, before the first signal: a second signal arriving while the
        // first is handled is queued on the same streams, never missed.
        let mut signals = TerminationSignals::new();
        tokio::spawn(async move {
            signals.recv().await;
            let _ = first_signal.send(());
            signals.recv().await;
            warn!("second signal: exiting now");
            if let Some(path) = &signalled.config.state_file {
                let _ = state::write_atomic(path, &state::render(&signalled.keys));
            }
            std::process::exit(1);
        });
        server::serve(listener, Arc::clone(&app), async {
            let _ = shutdown.await;
        })
        .await;
        if let Some(flusher) = flusher {
            flusher.abort();
        }
        if let Some(path) = state_file {
            Persistence::new(app, path).flush().await;
        }
        ExitCode::SUCCESS
    })
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
