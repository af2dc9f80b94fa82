//! Progress bars on a terminal, through the engine's `Progress` trait.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use resilience_core::entry::EntryMeta;
use resilience_core::progress::Progress;

/// A byte-counting bar with the current entry as its message.
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
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        let style = ProgressStyle::with_template(&format!(
            "{verb} {{spinner}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} [{{elapsed_precise}}] {{wide_msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
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
