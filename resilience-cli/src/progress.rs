//! Progress bars on a terminal, through the engine's [`Progress`] trait.
//!
//! Drawn on stderr only when it is a terminal and the output is not JSON, so scripts and logs
//! never see them.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use resilience_core::ops::progress::Progress;
use resilience_core::source::entry::EntryMeta;

/// A byte-counting bar (a spinner when the total is unknown) with the current entry as its
/// message.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar for `total` bytes (unknown when `None`), or `None` when stderr is not a terminal
    /// or the output is JSON.
    pub fn new(json: bool, verb: &str, total: Option<u64>) -> Option<Arc<Bar>> {
        if json || !std::io::stderr().is_terminal() {
            return None;
        }
        let (bar, template) = match total {
            Some(t) => (
                ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                format!(
                    "{verb} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} \
                     eta {{eta}} {{wide_msg}}"
                ),
            ),
            None => (
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                format!(
                    "{verb} {{spinner}} {{bytes}} {{bytes_per_sec}} [{{elapsed_precise}}] \
                     {{wide_msg}}"
                ),
            ),
        };
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(Arc::new(Bar { bar }))
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn entry(&self, meta: &EntryMeta) {
        self.bar.set_message(meta.path.to_string());
    }

    fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }
}
