//! The binary: parse configuration → init logging → bind → serve → drain.
//! Exits 64 on bad configuration, 69 when the address cannot be bound.

use std::process::ExitCode;
use std::sync::Arc;

use log::{error, info, warn};
use openrouter_proxy::cli::{self, Command};
use openrouter_proxy::config::Config;
use openrouter_proxy::state::{self, Persistence};
use openrouter_proxy::{env_file, logging, proxy::App, server};

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
        info!(
            "listening on {} with {} keys, forwarding to {}://{}{}, daily reset at midnight {}",
            config.listen,
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
        openrouter_proxy::probe::spawn(&app);
        let flusher = state_file.clone().map(|path| {
            let (app, interval) = (Arc::clone(&app), app.config.state_flush_interval);
            tokio::spawn(async move { Persistence::new(app, path).run(interval).await })
        });
        let (first_signal, shutdown) = tokio::sync::oneshot::channel::<()>();
        let signalled = Arc::clone(&app);
        tokio::spawn(async move {
            termination_signal().await;
            let _ = first_signal.send(());
            termination_signal().await;
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

/// Resolves on SIGTERM or SIGINT.
async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
