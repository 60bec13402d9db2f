//! The benchmark's one table: medians of the rounds, next to the targets.

use crate::Round;

/// What the run was asked to do.
pub struct Summary {
    pub rounds: usize,
    pub many_streams: usize,
    /// The seconds-long run `cargo test` does: its figures only show the bench still works.
    pub smoke: bool,
}

/// Held streams: proxy RSS when all were open, and p50/p99 chunk delay direct and proxied.
pub struct Hold {
    pub count: usize,
    pub rss: f64,
    pub direct: [f64; 2],
    pub proxied: [f64; 2],
}

/// Everything measured.
pub struct Results {
    pub rounds: Vec<Round>,
    /// The same rounds through nginx (empty without nginx).
    pub nginx_rounds: Vec<Round>,
    pub rss_idle: f64,
    pub holds: Vec<Hold>,
    pub allocations: Allocations,
}

/// What the allocation-counting child saw.
pub struct Allocations {
    pub per_request: f64,
    pub per_chunk: f64,
    /// Live heap bytes per held stream.
    pub heap_per_stream: f64,
    /// Live heap bytes gained over five more bursts of streams, once all are closed.
    pub heap_growth_after_bursts: f64,
}

/// One row per measure: name, direct, proxied, added or ratio, target.
pub struct Table(Vec<[String; 5]>);

impl Table {
    fn row(&mut self, cells: [&str; 5]) {
        self.0.push(cells.map(str::to_owned));
    }

    /// Prints the first `columns` columns as a Markdown table.
    fn print(&self, columns: usize) {
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.0
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (i, row) in self.0.iter().enumerate() {
            let cells: Vec<String> = row
                .iter()
                .take(columns)
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            println!("| {} |", cells.join(" | "));
            if i == 0 {
                println!(
                    "|{}|",
                    widths
                        .iter()
                        .map(|w| "-".repeat(w + 2))
                        .collect::<Vec<_>>()
                        .join("|")
                );
            }
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A direct/proxied pair of microsecond figures with the added time.
fn added_row(t: &mut Table, name: &str, direct: f64, proxied: f64, added: f64, target: &str) {
    t.row([
        name,
        &format!("{direct:.0} µs"),
        &format!("{proxied:.0} µs"),
        &format!("{added:+.0} µs"),
        target,
    ]);
}

type Pair = fn(&Round) -> [f64; 2];
/// One figure of a round.
type Figure = fn(&Round) -> f64;

pub fn print(summary: &Summary, r: &Results) {
    let mut t = Table(Vec::new());
    t.row(["measure", "direct", "proxy", "added / ratio", "target"]);
    timing_rows(&mut t, summary, r);
    memory_rows(&mut t, r);
    println!();
    if summary.smoke {
        // A debug build for seconds on a machine busy with other tests: no target applies.
        println!("e2e smoke run (what `cargo test` runs to check the bench works; its numbers mean nothing, `cargo bench --bench e2e` measures)");
        t.print(4);
        return;
    }
    println!(
        "e2e: {} round(s), medians; {} cores",
        summary.rounds,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    t.print(5);
    if !r.nginx_rounds.is_empty() {
        nginx_table(r);
    }
}

/// The proxy next to nginx, each against direct measured in its own round.
fn nginx_table(r: &Results) {
    let ours = |f: &dyn Fn(&Round) -> f64| median(r.rounds.iter().map(f).collect());
    let theirs = |f: &dyn Fn(&Round) -> f64| median(r.nginx_rounds.iter().map(f).collect());
    let mut t = Table(Vec::new());
    t.row([
        "measure (added to direct, or ratio of direct)",
        "nginx",
        "proxy",
        "",
        "",
    ]);
    let added: [(&str, Figure); 6] = [
        ("latency c=1 p50", |x| x.lat[1][0] - x.lat[0][0]),
        ("latency c=1 p99", |x| x.lat[1][1] - x.lat[0][1]),
        ("SSE time to first byte p50", |x| {
            x.ttfb[1][0] - x.ttfb[0][0]
        }),
        ("SSE time to first byte p99", |x| {
            x.ttfb[1][1] - x.ttfb[0][1]
        }),
        ("chunk delay p50", |x| x.chunk[1][0] - x.chunk[0][0]),
        ("chunk delay p99", |x| x.chunk[1][1] - x.chunk[0][1]),
    ];
    for (name, f) in added {
        t.row([
            name,
            &format!("{:+.0} µs", theirs(&f)),
            &format!("{:+.0} µs", ours(&f)),
            "",
            "",
        ]);
    }
    let ratios: [(&str, Figure); 2] = [
        ("throughput c=64, 0 ms upstream", |x| x.rps0[1] / x.rps0[0]),
        ("throughput c=64, 20 ms upstream", |x| {
            x.rps20[1] / x.rps20[0]
        }),
    ];
    for (name, f) in ratios {
        t.row([
            name,
            &format!("{:.2} ×", theirs(&f)),
            &format!("{:.2} ×", ours(&f)),
            "",
            "",
        ]);
    }
    for (name, f) in [
        (
            "CPU per request, c=64",
            (|x: &Round| x.cpu_per_request) as Figure,
        ),
        ("CPU per forwarded chunk", |x: &Round| x.cpu_per_chunk),
    ] {
        t.row([
            name,
            &format!("{:.1} µs", theirs(&f)),
            &format!("{:.1} µs", ours(&f)),
            "",
            "",
        ]);
    }
    let peak = |x: &Round| x.rss_load;
    t.row([
        "RSS peak, c=64 load",
        &format!("{:.1} MB", theirs(&peak)),
        &format!("{:.1} MB", ours(&peak)),
        "",
        "",
    ]);
    println!();
    println!("next to nginx (same run, same mock; nginx: proxy_buffering off, no access log, one worker per core)");
    t.print(3);
}

fn timing_rows(t: &mut Table, summary: &Summary, r: &Results) {
    let med = |f: &dyn Fn(&Round) -> f64| median(r.rounds.iter().map(f).collect());
    for (name, p, target) in [
        ("latency c=1 p50", 0, ""),
        ("latency c=1 p99", 1, "added ≤ 100 µs"),
    ] {
        added_row(
            t,
            name,
            med(&|x| x.lat[0][p]),
            med(&|x| x.lat[1][p]),
            med(&|x| x.lat[1][p] - x.lat[0][p]),
            target,
        );
    }
    let throughput: [(&str, Pair, &str); 2] = [
        (
            "throughput c=64, 0 ms upstream",
            |x| x.rps0,
            "≥ 0.5 × direct",
        ),
        (
            "throughput c=64, 20 ms upstream",
            |x| x.rps20,
            "≥ 0.97 × direct",
        ),
    ];
    for (name, f, target) in throughput {
        let (d, p, ratio) = (
            med(&|x| f(x)[0]),
            med(&|x| f(x)[1]),
            med(&|x| f(x)[1] / f(x)[0]),
        );
        t.row([
            name,
            &format!("{d:.0} req/s"),
            &format!("{p:.0} req/s"),
            &format!("{ratio:.2} ×"),
            target,
        ]);
    }
    for (name, p, target) in [
        ("SSE time to first byte p50", 0, ""),
        ("SSE time to first byte p99", 1, "added ≤ 200 µs"),
    ] {
        added_row(
            t,
            name,
            med(&|x| x.ttfb[0][p]),
            med(&|x| x.ttfb[1][p]),
            med(&|x| x.ttfb[1][p] - x.ttfb[0][p]),
            target,
        );
    }
    for (p, label) in [(0, "p50"), (1, "p99")] {
        let name = format!("chunk delay {label}, {} streams", summary.many_streams);
        added_row(
            t,
            &name,
            med(&|x| x.chunk[0][p]),
            med(&|x| x.chunk[1][p]),
            med(&|x| x.chunk[1][p] - x.chunk[0][p]),
            "",
        );
    }
}

fn memory_rows(t: &mut Table, r: &Results) {
    let med = |f: &dyn Fn(&Round) -> f64| median(r.rounds.iter().map(f).collect());
    t.row([
        "proxy RSS idle",
        "",
        &format!("{:.1} MB", r.rss_idle),
        "",
        "≤ 8 MB",
    ]);
    t.row([
        "proxy RSS peak, c=64 load",
        "",
        &format!("{:.1} MB", med(&|x| x.rss_load)),
        "",
        "",
    ]);
    t.row([
        "proxy CPU per request, c=64",
        "",
        &format!("{:.1} µs", med(&|x| x.cpu_per_request)),
        "",
        "",
    ]);
    t.row([
        "proxy CPU per forwarded chunk",
        "",
        &format!("{:.1} µs", med(&|x| x.cpu_per_chunk)),
        "",
        "",
    ]);
    for h in &r.holds {
        let big = h.count >= 9900;
        t.row([
            &format!("proxy RSS holding {} SSE streams", h.count),
            "",
            &format!("{:.1} MB", h.rss),
            "",
            if big { "≤ 100 MB" } else { "" },
        ]);
        let name = format!("chunk delay p99, {} streams", h.count);
        added_row(
            t,
            &name,
            h.direct[1],
            h.proxied[1],
            h.proxied[1] - h.direct[1],
            if big { "added ≤ 1 ms" } else { "" },
        );
    }
    let a = &r.allocations;
    t.row([
        "allocations per proxied request",
        "",
        &format!("{:.1}", a.per_request),
        "",
        "",
    ]);
    t.row([
        "allocations per forwarded SSE chunk",
        "",
        &format!("{:.2}", a.per_chunk),
        "",
        "≤ 2",
    ]);
    t.row([
        "live heap per held SSE stream",
        "",
        &format!("{:.1} KB", a.heap_per_stream / 1024.0),
        "",
        "",
    ]);
    let growth = a.heap_growth_after_bursts / 1024.0;
    t.row([
        "live heap gained over 5 more closed bursts",
        "",
        &format!("{growth:+.1} KB"),
        "",
        "≈ 0 (no leak)",
    ]);
}
