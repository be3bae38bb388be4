//! The live progress bar (indicatif, on stderr): messages so far and msgs/s. Off with
//! `--no-progress` or when stdout is not a terminal (a pipe, a file, CI).

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_bench::load::report::thousands;
use tokio::task::JoinHandle;

use crate::Run;

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// A running progress bar; [`Progress::finish`] clears it.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the bar over `run.progress` (measured messages so far), out of `total`
    /// when the run is count-bounded.
    pub fn start(run: &Arc<Run>, label: &'static str, total: Option<u64>) -> Progress {
        if run.plan.opts.no_progress || !std::io::stdout().is_terminal() {
            return Progress {
                bar: None,
                ticker: None,
            };
        }
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        let template = match total {
            Some(_) => "{prefix} {elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
            None => "{prefix} {elapsed_precise} {spinner} {pos} {msg}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label);
        let ticker = {
            let bar = bar.clone();
            let run = run.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tick.tick().await;
                    let done = run.progress.load(Ordering::Relaxed);
                    let now = run.now_ns();
                    bar.set_position(done);
                    if now < run.warmup_ns {
                        bar.set_message("warming up");
                    } else {
                        let secs = (now - run.warmup_ns) as f64 / 1e9;
                        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
                        bar.set_message(format!("{} msgs/s", thousands(rate.round() as u64)));
                    }
                }
            })
        };
        Progress {
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }

    /// Stops and clears the bar.
    pub fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
