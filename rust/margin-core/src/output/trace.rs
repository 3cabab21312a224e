//! Phase timings on stderr when `MARGIN_ENGINE_TRACE` is set (like `POLARS_VERBOSE`): the tool
//! for finding where a call spends its time, without a profiler.
//!
//! ```text
//! MARGIN_ENGINE_TRACE=1 python -c '...'
//! [margin-engine]   12.3 ms  positions: read columns
//! ```

use std::sync::OnceLock;
use std::time::Instant;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MARGIN_ENGINE_TRACE").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// A stopwatch that prints the time since the last lap at each [`Phases::lap`].
pub struct Phases {
    last: Option<Instant>,
}

impl Phases {
    pub fn start() -> Phases {
        Phases { last: enabled().then(Instant::now) }
    }

    pub fn lap(&mut self, what: &str) {
        if let Some(last) = self.last {
            let now = Instant::now();
            eprintln!("[margin-engine] {:8.1} ms  {what}", (now - last).as_secs_f64() * 1e3);
            self.last = Some(now);
        }
    }
}
