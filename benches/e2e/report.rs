//! The benchmark's table: every contender next to direct and, when nginx ran, the
//! shipped build (the last proxy column) against nginx.

use std::time::Duration;

use crate::Figures;

/// What the run was asked to do.
pub struct Summary {
    pub rounds: usize,
    pub few_streams: usize,
    pub many_streams: usize,
    /// The seconds-long run `cargo test` does: its figures only show the bench still works.
    pub smoke: bool,
}

/// Held streams: RSS while all were open and once they had closed, and p50/p99 chunk delay.
pub struct Hold {
    pub count: usize,
    pub rss_holding: f64,
    pub rss_after: f64,
    pub delays: [f64; 2],
}

/// One contender's rounds and held streams.
pub struct Measured {
    pub name: &'static str,
    pub rss_idle: f64,
    pub rounds: Vec<Figures>,
    pub hold: Option<Hold>,
}

/// Everything measured.
pub struct Results {
    /// Direct to the mock, per round.
    pub direct: Vec<Figures>,
    pub direct_hold: Option<[f64; 2]>,
    pub measured: Vec<Measured>,
    pub allocations: Option<Allocations>,
    /// How long after the held streams closed `rss_after` was read.
    pub settle: Duration,
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

/// Rows of cells, printed as a Markdown table.
pub struct Table(Vec<Vec<String>>);

impl Table {
    fn print(&self) {
        let columns = self.0.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.0
                    .iter()
                    .map(|r| r.get(c).map_or(0, |cell| cell.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (i, row) in self.0.iter().enumerate() {
            let cells: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| format!("{:<w$}", row.get(c).map_or("", String::as_str)))
                .collect();
            println!("| {} |", cells.join(" | "));
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
                println!("|{}|", rule.join("|"));
            }
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// How a row's figures read, and which way is better.
#[derive(Clone, Copy)]
enum Kind {
    /// µs added to direct (direct shows its own µs); lower is better.
    Added,
    /// Fraction of direct's throughput (direct shows req/s); higher is better.
    Ratio,
    /// The contender's own µs (CPU); lower is better.
    Micros,
    /// The contender's own MB; lower is better.
    Megabytes,
    /// The contender's own count per request; lower is better.
    PerRequest,
}

impl Kind {
    fn cell(self, value: f64) -> String {
        if value.is_nan() {
            return "n/a".to_owned();
        }
        match self {
            Kind::Added => format!("{value:+.0} µs"),
            Kind::Ratio => format!("{value:.2} ×"),
            Kind::Micros => format!("{value:.1} µs"),
            Kind::Megabytes => format!("{value:.1} MB"),
            Kind::PerRequest => format!("{value:.2}"),
        }
    }

    fn direct_cell(self, value: f64) -> String {
        match self {
            Kind::Added => format!("{value:.0} µs"),
            Kind::Ratio => format!("{value:.0} req/s"),
            Kind::Micros | Kind::Megabytes | Kind::PerRequest => String::new(),
        }
    }

    /// Whether `ours` is at least as good as `theirs`.
    fn at_least_as_good(self, ours: f64, theirs: f64) -> bool {
        match self {
            Kind::Ratio => ours >= theirs,
            _ => ours <= theirs,
        }
    }
}

/// A figure of one round; for `Added` and `Ratio` rows, of direct's round too.
type Figure = fn(&Figures) -> f64;

/// The table being built, and which columns the verdict compares.
struct Comparison {
    table: Table,
    /// (nginx, the shipped build) column indexes among the contenders.
    verdict: Option<(usize, usize)>,
}

impl Comparison {
    fn new(r: &Results) -> Comparison {
        let nginx = r.measured.iter().position(|m| m.name == "nginx");
        // The shipped build: the last proxy column (musl when it was built).
        let shipped = r.measured.iter().rposition(|m| m.name != "nginx");
        let verdict = nginx.zip(shipped);
        let mut header = vec!["measure".to_owned(), "direct".to_owned()];
        header.extend(r.measured.iter().map(|m| m.name.to_owned()));
        if let Some((_, shipped)) = verdict {
            header.push(format!("{} vs nginx", r.measured[shipped].name));
        }
        Comparison {
            table: Table(vec![header]),
            verdict,
        }
    }

    fn row(&mut self, name: String, kind: Kind, direct: f64, values: &[f64]) {
        let mut cells = vec![name, kind.direct_cell(direct)];
        cells.extend(values.iter().map(|v| kind.cell(*v)));
        if let Some((nginx, shipped)) = self.verdict {
            let (ours, theirs) = (values[shipped], values[nginx]);
            cells.push(if ours.is_nan() || theirs.is_nan() {
                String::new()
            } else if kind.cell(ours) == kind.cell(theirs) {
                // Equal as printed: a difference below the table's precision is no verdict.
                "level".to_owned()
            } else if kind.at_least_as_good(ours, theirs) {
                "ahead".to_owned()
            } else {
                "behind".to_owned()
            });
        }
        self.table.0.push(cells);
    }
}

/// The rows measured in every round.
fn round_rows(summary: &Summary) -> Vec<(String, Kind, Figure)> {
    let (few, many) = (summary.few_streams, summary.many_streams);
    vec![
        ("c=1 latency p50".into(), Kind::Added, |x| x.lat[0]),
        ("c=1 latency p99".into(), Kind::Added, |x| x.lat[1]),
        ("c=1 latency p50, all on one CPU".into(), Kind::Added, |x| {
            x.lat_pinned[0]
        }),
        ("c=1 latency p99, all on one CPU".into(), Kind::Added, |x| {
            x.lat_pinned[1]
        }),
        ("throughput c=64, 0 ms upstream".into(), Kind::Ratio, |x| {
            x.rps0
        }),
        ("throughput c=64, 20 ms upstream".into(), Kind::Ratio, |x| {
            x.rps20
        }),
        ("CPU per request, c=64".into(), Kind::Micros, |x| {
            x.cpu_per_request
        }),
        ("of which in the kernel".into(), Kind::Micros, |x| {
            x.kernel_cpu_per_request
        }),
        (
            "context switches per request, c=64".into(),
            Kind::PerRequest,
            |x| x.switches_per_request,
        ),
        ("SSE time to first byte p50".into(), Kind::Added, |x| {
            x.ttfb[0]
        }),
        ("SSE time to first byte p99".into(), Kind::Added, |x| {
            x.ttfb[1]
        }),
        (
            format!("chunk delay p50, {few} streams"),
            Kind::Added,
            |x| x.chunk_few[0],
        ),
        (
            format!("chunk delay p99, {few} streams"),
            Kind::Added,
            |x| x.chunk_few[1],
        ),
        (
            format!("chunk delay p50, {many} streams"),
            Kind::Added,
            |x| x.chunk_many[0],
        ),
        (
            format!("chunk delay p99, {many} streams"),
            Kind::Added,
            |x| x.chunk_many[1],
        ),
        (
            format!("CPU per forwarded chunk, {many} streams"),
            Kind::Micros,
            |x| x.cpu_per_chunk,
        ),
        ("RSS peak, c=64 load".into(), Kind::Megabytes, |x| {
            x.rss_load
        }),
        (
            format!("RSS holding {many} streams"),
            Kind::Megabytes,
            |x| x.rss_streams,
        ),
    ]
}

/// Each contender's median over the rounds of its figure, against direct's in the same round.
fn per_round(r: &Results, kind: Kind, f: Figure) -> Vec<f64> {
    r.measured
        .iter()
        .map(|m| {
            let figures = m.rounds.iter().zip(&r.direct).map(|(c, d)| match kind {
                Kind::Added => f(c) - f(d),
                Kind::Ratio => f(c) / f(d),
                Kind::Micros | Kind::Megabytes | Kind::PerRequest => f(c),
            });
            median(figures.collect())
        })
        .collect()
}

fn hold_rows(c: &mut Comparison, r: &Results, direct_hold: [f64; 2]) {
    let hold = |f: &dyn Fn(&Hold) -> f64| -> Vec<f64> {
        r.measured
            .iter()
            .map(|m| m.hold.as_ref().map_or(f64::NAN, f))
            .collect()
    };
    let count = r
        .measured
        .iter()
        .find_map(|m| m.hold.as_ref())
        .map_or(0, |h| h.count);
    let delays = hold(&|h| h.delays[1] - direct_hold[1]);
    let name = format!("chunk delay p99, {count} held streams");
    c.row(name, Kind::Added, direct_hold[1], &delays);
    let name = format!("RSS holding {count} streams");
    c.row(name, Kind::Megabytes, 0.0, &hold(&|h| h.rss_holding));
    let name = format!("RSS {}s after they closed", r.settle.as_secs());
    c.row(name, Kind::Megabytes, 0.0, &hold(&|h| h.rss_after));
}

fn allocation_table(a: &Allocations) {
    let rows = [
        (
            "allocations per proxied request",
            format!("{:.1}", a.per_request),
        ),
        (
            "allocations per forwarded SSE chunk",
            format!("{:.2}", a.per_chunk),
        ),
        (
            "live heap per held SSE stream",
            format!("{:.1} KB", a.heap_per_stream / 1024.0),
        ),
        (
            "live heap gained over 5 more closed bursts (≈ 0: no leak)",
            format!("{:+.1} KB", a.heap_growth_after_bursts / 1024.0),
        ),
    ];
    let mut t = Table(vec![vec!["measure".to_owned(), "proxy".to_owned()]]);
    t.0.extend(
        rows.into_iter()
            .map(|(name, value)| vec![name.to_owned(), value]),
    );
    println!();
    println!("allocations (the proxy's library code in a child process with a counting allocator)");
    t.print();
}

pub fn print(summary: &Summary, r: &Results) {
    let mut c = Comparison::new(r);
    if !r.direct.is_empty() {
        for (name, kind, f) in round_rows(summary) {
            let direct = median(r.direct.iter().map(f).collect());
            c.row(name, kind, direct, &per_round(r, kind, f));
        }
    }
    let idle: Vec<f64> = r.measured.iter().map(|m| m.rss_idle).collect();
    c.row("RSS idle".into(), Kind::Megabytes, 0.0, &idle);
    if let Some(direct_hold) = r.direct_hold {
        hold_rows(&mut c, r, direct_hold);
    }
    println!();
    if summary.smoke {
        // A debug build for seconds on a machine busy with other tests: no figure means anything.
        println!("e2e smoke run (what `cargo test` runs to check the bench works; its numbers mean nothing, `cargo bench --bench e2e` measures)");
    } else {
        println!(
            "e2e: {} round(s), medians; {} cores; added = through it minus direct in the same round",
            summary.rounds,
            std::thread::available_parallelism().map_or(0, usize::from)
        );
    }
    c.table.print();
    if let Some(a) = &r.allocations {
        allocation_table(a);
    }
}
