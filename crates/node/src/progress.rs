//! Progress of long work in a node (a checkpoint's download, a catch-up's replay) as log lines:
//! how far, how fast, and how long is left. A node runs under a supervisor, not at a terminal,
//! so progress is a line per step rather than a bar.

use std::time::Duration;

/// Work measured in units (bytes, windows) of which `total` are to be done.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

impl Progress {
    pub fn new(total: u64) -> Progress {
        Progress { done: 0, total }
    }

    /// The share done, 0–100 (100 when there is nothing to do).
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            return 100.0;
        }
        100.0 * self.done.min(self.total) as f64 / self.total as f64
    }

    /// Units a second so far, after `elapsed`.
    pub fn rate(&self, elapsed: Duration) -> f64 {
        let seconds = elapsed.as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        self.done as f64 / seconds
    }

    /// The time left at the rate so far; `None` before anything is done.
    pub fn remaining(&self, elapsed: Duration) -> Option<Duration> {
        let rate = self.rate(elapsed);
        (rate > 0.0)
            .then(|| Duration::from_secs_f64(self.total.saturating_sub(self.done) as f64 / rate))
    }
}

/// `1.5 GB` style, decimal units as storage providers bill and networks count them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `1h02m`, `3m05s` or `12s`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_done_in_ten_seconds_has_thirty_left() {
        let progress = Progress {
            done: 250,
            total: 1000,
        };
        assert_eq!(progress.percent(), 25.0);
        assert_eq!(progress.rate(Duration::from_secs(10)), 25.0);
        assert_eq!(
            progress.remaining(Duration::from_secs(10)),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn nothing_done_has_no_estimate_and_nothing_to_do_is_complete() {
        assert_eq!(Progress::new(10).remaining(Duration::from_secs(5)), None);
        assert_eq!(Progress::new(10).rate(Duration::ZERO), 0.0);
        assert_eq!(Progress::new(0).percent(), 100.0);
    }

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500), "1.5 KB");
        assert_eq!(bytes(16_060_000_000), "16.1 GB");
        assert_eq!(duration(Duration::from_secs(12)), "12s");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(duration(Duration::from_secs(3720)), "1h02m");
    }
}
