//! The allocation-counting proxy: the same library code as the binary, run
//! in a child process of the benchmark whose global allocator counts calls.
//! It answers `stats` lines on stdin with `allocations reallocations live_heap_bytes`.

use std::io::BufRead;

use openrouter_proxy::app::App;
use openrouter_proxy::config::Config;

pub fn run(stats: impl Fn() -> (usize, usize, usize) + Send + 'static) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let vars: std::collections::HashMap<String, String> = std::env::vars().collect();
        let config =
            Config::from_lookup(|name| vars.get(name).cloned()).expect("valid child config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind child proxy");
        println!("ready {}", listener.local_addr().expect("address").port());
        tokio::spawn(openrouter_proxy::server::serve(
            listener,
            App::new(config),
            std::future::pending(),
        ));
        tokio::task::spawn_blocking(move || {
            for line in std::io::stdin().lock().lines() {
                if line.map_or(true, |l| l.trim() != "stats") {
                    break;
                }
                let (allocations, reallocations, live_bytes) = stats();
                println!("{allocations} {reallocations} {live_bytes}");
            }
        })
        .await
        .expect("stdin loop");
    });
}
