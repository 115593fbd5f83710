//! A progress line on stderr while `bench` and `chaos` run, redrawn a few times a second;
//! nothing at all when stderr is not a terminal, so logs and pipes stay clean.
//!
//! Work is counted with [`tick`] from wherever it is done (one counter for the process:
//! one run shows progress at a time).

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static DONE: AtomicU64 = AtomicU64::new(0);

/// Counts `n` units of work done.
pub fn tick(n: u64) {
    DONE.fetch_add(n, Ordering::Relaxed);
}

/// A running progress line; [`Progress::finish`] clears it.
pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Progress through `total` operations counted by [`tick`].
    pub fn ops(total: u64, what: &str) -> Self {
        DONE.store(0, Ordering::Relaxed);
        Self::start(total, what, "{msg} [{bar:30}] {pos}/{len} ops, {per_sec}, {eta} left", |_| {
            DONE.load(Ordering::Relaxed)
        })
    }

    /// Progress through a run of `length`, by the clock.
    pub fn timed(length: Duration, what: &str) -> Self {
        let started = Instant::now();
        Self::start(length.as_secs().max(1), what, "{msg} [{bar:30}] {pos}/{len} s", move |_| {
            started.elapsed().as_secs()
        })
    }

    fn start(total: u64, what: &str, template: &str, position: impl Fn(()) -> u64 + Send + 'static) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None, ticker: None };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                shown.set_position(position(()).min(total));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { bar: Some(bar), ticker: Some(ticker) }
    }

    /// Stops and clears the line.
    pub fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
