//! Rendering build progress: a spinner on a TTY, plain lines otherwise (CI), nothing for --json.

use std::io::IsTerminal;
use std::sync::Mutex;

use hakim::build::{LayerReport, LayerSource, Progress};
use hakim::fetch::FetchProgress;
use hakim::net::{RetryEvent, RetryObserver};
use indicatif::{ProgressBar, ProgressStyle};

/// Progress on stderr, chosen by whether stderr is a terminal.
pub struct Reporter {
    bar: Option<ProgressBar>,
    quiet: bool,
    lock: Mutex<()>,
    fetch: Mutex<FetchTally>,
}

#[derive(Default)]
struct FetchTally {
    items: usize,
    bytes: u64,
    done: usize,
    cached: usize,
    got: u64,
}

impl Reporter {
    /// A reporter; `quiet` prints nothing but errors.
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal() && std::env::var_os("CI").is_none())
            .then(|| {
                let b = ProgressBar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                        .expect("valid template"),
                );
                b.enable_steady_tick(std::time::Duration::from_millis(120));
                b
            });
        Self {
            bar,
            quiet,
            lock: Mutex::new(()),
            fetch: Mutex::new(FetchTally::default()),
        }
    }

    /// Print a line above the bar (or plainly).
    pub fn line(&self, msg: &str) {
        if self.quiet {
            return;
        }
        let _g = self.lock.lock();
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// Set the bar's message (no-op without a bar).
    pub fn status(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Human size.
pub fn size(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

impl Progress for Reporter {
    fn layer_started(&self, variant: &str, arch: &str, layer: &str) {
        self.status(&format!("{variant}/{arch}: building layer {layer}"));
        if self.bar.is_none() {
            self.line(&format!("{variant}/{arch}: building layer {layer}"));
        }
    }

    fn layer_finished(&self, variant: &str, arch: &str, r: &LayerReport) {
        let how = match r.source {
            LayerSource::Built => "built",
            LayerSource::Local => "cached",
            LayerSource::Remote => "from the registry cache",
        };
        self.line(&format!(
            "{variant}/{arch}: layer {:<12} {} {:>10} {how}",
            r.name,
            &r.digest.hex()[..12],
            size(r.size)
        ));
    }

    fn warning(&self, message: &str) {
        self.line(&format!("warning: {message}"));
    }
}

impl FetchProgress for Reporter {
    fn begin(&self, items: usize, bytes: u64) {
        let mut t = self.fetch.lock().expect("tally");
        *t = FetchTally {
            items,
            bytes,
            ..FetchTally::default()
        };
    }

    fn advance(&self, bytes: u64) {
        let mut t = self.fetch.lock().expect("tally");
        t.got += bytes;
        let msg = format!(
            "fetching {}/{} packages, {} / {}",
            t.done,
            t.items,
            size(t.got),
            size(t.bytes)
        );
        drop(t);
        self.status(&msg);
    }

    fn item_done(&self, _label: &str, cached: bool) {
        let mut t = self.fetch.lock().expect("tally");
        t.done += 1;
        t.cached += usize::from(cached);
        let finished = t.done == t.items;
        let msg = format!(
            "fetched {}/{} files ({} from cache), {}",
            t.done,
            t.items,
            t.cached,
            size(t.got)
        );
        drop(t);
        self.status(&msg);
        if finished && self.bar.is_none() && !self.quiet {
            self.line(&msg);
        }
    }
}

impl RetryObserver for Reporter {
    fn retrying(&self, event: &RetryEvent<'_>) {
        self.line(&format!("retry: {event}"));
    }
}

/// Retries as plain stderr lines, for commands without a progress display.
pub struct RetryLines;

impl RetryObserver for RetryLines {
    fn retrying(&self, event: &RetryEvent<'_>) {
        eprintln!("retry: {event}");
    }
}
