//! Writing log lines: formatted straight into a per-thread buffer (no allocation, no
//! lock), and on the server's worker threads written to stderr in batches whenever the
//! worker runs out of work, so the line each request logs costs no system call on its
//! path. Warnings and errors, and every line from other threads, are written at once.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::Write as _;

use log::{Level, Log, Metadata, Record};

/// A batch is written once it holds this much, even while the worker stays busy.
const BATCH_BYTES: usize = 32 * 1024;

thread_local! {
    /// Lines formatted on this thread and not yet written (always empty on a thread
    /// that does not batch).
    static PENDING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread's lines wait for [`flush_batched`].
    static BATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Lets this thread's info, debug and trace lines wait for [`flush_batched`]; only for
/// threads that call it whenever they park (the server's workers).
pub fn batch_on_this_thread() {
    BATCHING.with(|batching| batching.set(true));
}

/// Writes this thread's waiting lines to stderr.
pub fn flush_batched() {
    // A flush from inside a log call (impossible today) would find the buffer borrowed: skip.
    let _ = PENDING.try_with(|pending| {
        if let Ok(mut pending) = pending.try_borrow_mut() {
            write_out(&mut pending);
        }
    });
}

fn write_out(pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        // Nothing to do about a closed or full stderr: the line is dropped, the proxy serves on.
        let _ = std::io::stderr().lock().write_all(pending);
        pending.clear();
    }
}

/// How lines look.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    /// `[2026-12-06T09:04:46.123Z INFO  target] message`
    Plain,
    /// The same with the level coloured, for a terminal.
    Styled,
    /// `{"ts":"…","level":"INFO","target":"…","msg":"…"}`
    Json,
}

/// The process's logger: `RUST_LOG`-style filtering, then one line per record.
pub struct Lines {
    pub filter: env_filter::Filter,
    pub format: Format,
}

impl Log for Lines {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        let urgent = record.level() <= Level::Warn || !BATCHING.with(Cell::get);
        let written = PENDING.try_with(|pending| match pending.try_borrow_mut() {
            Ok(mut pending) => {
                self.line(&mut pending, record);
                if urgent || pending.len() >= BATCH_BYTES {
                    write_out(&mut pending);
                }
            }
            // A record logged while formatting another one's arguments.
            Err(_) => self.line_alone(record),
        });
        if written.is_err() {
            // This thread is exiting and its buffer is gone.
            self.line_alone(record);
        }
    }

    fn flush(&self) {
        flush_batched();
    }
}

impl Lines {
    fn line_alone(&self, record: &Record<'_>) {
        let mut line = Vec::new();
        self.line(&mut line, record);
        write_out(&mut line);
    }

    /// Appends one line for `record` to `out`.
    fn line(&self, out: &mut Vec<u8>, record: &Record<'_>) {
        let now = jiff::Timestamp::now();
        let mut out = Appender(out);
        // Writing into a Vec cannot fail; a Display impl that errs leaves its line cut short.
        let _ = match self.format {
            Format::Plain => writeln!(
                out,
                "[{now:.3} {:<5} {}] {}",
                record.level(),
                record.target(),
                record.args()
            ),
            Format::Styled => writeln!(
                out,
                "[{now:.3} {}{:<5}\x1b[0m {}] {}",
                colour(record.level()),
                record.level(),
                record.target(),
                record.args()
            ),
            Format::Json => {
                let _ = write!(
                    out,
                    "{{\"ts\":\"{now:.3}\",\"level\":\"{}\",\"target\":\"",
                    record.level()
                );
                let _ = write!(JsonString(&mut out), "{}", record.target());
                let _ = out.write_str("\",\"msg\":\"");
                let _ = write!(JsonString(&mut out), "{}", record.args());
                out.write_str("\"}\n")
            }
        };
    }
}

fn colour(level: Level) -> &'static str {
    match level {
        Level::Error => "\x1b[31m",
        Level::Warn => "\x1b[33m",
        Level::Info => "\x1b[32m",
        Level::Debug => "\x1b[34m",
        Level::Trace => "\x1b[36m",
    }
}

/// `fmt::Write` into a byte buffer.
struct Appender<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Appender<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Writes through to `Appender` escaped as the inside of a JSON string.
struct JsonString<'a, 'b>(&'a mut Appender<'b>);

impl std::fmt::Write for JsonString<'_, '_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // Most pieces need no escape and are copied whole: stepping through every byte made
        // a JSON line cost twice a plain one (callgrind). Bitwise, not lazy: without a branch
        // per byte the check is vectorized (a filter-and-count cost 2,100 more a line).
        #[allow(clippy::needless_bitwise_bool)]
        let plain_only = !s.bytes().fold(false, |seen, byte| {
            seen | (byte < 0x20) | (byte == b'"') | (byte == b'\\') | (byte == 0x7f)
        });
        if plain_only {
            return self.0.write_str(s);
        }
        let mut plain = 0;
        for (at, byte) in s.bytes().enumerate() {
            let escaped: &str = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f | 0x7f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..at])?;
            if escaped.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escaped)?;
            }
            plain = at + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(format: Format, message: std::fmt::Arguments<'_>) -> String {
        let lines = Lines {
            filter: env_filter::Builder::new().build(),
            format,
        };
        let record = Record::builder()
            .level(Level::Info)
            .target("openrouter_proxy::x")
            .args(message)
            .build();
        let mut out = Vec::new();
        lines.line(&mut out, &record);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_lines_keep_the_familiar_shape() {
        let text = line(Format::Plain, format_args!("served {}", 1));
        assert!(text.starts_with("[20"), "{text}");
        assert!(
            text.ends_with("Z INFO  openrouter_proxy::x] served 1\n"),
            "{text}"
        );
        // Millisecond timestamps: `2026-12-06T09:04:46.123Z`.
        assert_eq!(text.find(' '), Some(25), "{text}");
    }

    #[test]
    fn json_lines_are_valid_json_whatever_the_message_holds() {
        let text = line(
            Format::Json,
            format_args!("a \"quoted\" \\ {}\n\u{1}é", "tab\t"),
        );
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(value["msg"], "a \"quoted\" \\ tab\t\n\u{1}é");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["target"], "openrouter_proxy::x");
        assert!(value["ts"].as_str().unwrap().ends_with('Z'));
    }
}
