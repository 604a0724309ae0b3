//! A log line that may repeat at most once per interval, however often its event happens
//! (a flood must not flood the log too); the lines it holds back are counted into the next.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Decides whether an event's log line is written now.
pub struct Throttled {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> Throttled {
        Throttled {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Record one event at `now`: `Some(n)` when its line is to be written now, `n` being how
    /// many events since the last written line were not logged; `None` to stay quiet.
    pub fn event(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock();
        match st.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                st.1 += 1;
                None
            }
            _ => {
                let held = st.1;
                *st = (Some(now), 0);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_the_rest() {
        let t = Throttled::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.event(t0), Some(0));
        assert_eq!(t.event(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.event(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.event(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.event(t0 + Duration::from_secs(11)), None);
    }
}
