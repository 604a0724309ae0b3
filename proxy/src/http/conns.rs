//! The cap on open client connections of one listener, and who goes first when it is reached.
//!
//! Every accepted connection is registered with the time it started waiting for a request:
//! at accept, and again each time a response has been handed back. A connection whose request
//! has been read in full is being served and is never closed to make room. When the cap is
//! reached, the connections that have waited longest for a complete request (the slow and
//! the unfinished, and idle keep-alive connections before fresh ones) are closed, a batch at a
//! time, and the new connection is served; only when every open connection is being served is
//! the new one closed at once. A legitimate client, which sends its request as soon as it is
//! connected and is then served, is thus never the one to go while a flood of slow or
//! unfinished connections is open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::throttled::Throttled;
use crate::metrics::ConnMetrics;

/// How many waiting connections one admission at the cap closes: a batch, so that a flood
/// at the cap does not scan the table on every accept. The descriptors of a batch are released
/// moments after it is chosen, within the descriptor reserve (see [`crate::fdlimit`]).
const EVICT_BATCH: usize = 32;
/// At most one "cap reached" and one "accept failed" line per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The open connections of one listener.
pub struct Connections {
    listener: &'static str,
    cap: usize,
    epoch: Instant,
    next_id: AtomicU64,
    table: Mutex<HashMap<u64, Arc<Slot>>>,
    metrics: ConnMetrics,
    at_cap_log: Throttled,
    accept_log: Throttled,
}

/// What the registry knows of one connection.
struct Slot {
    /// Nanoseconds since `epoch` (+1) at which the connection started waiting for its current
    /// request; 0 while a fully read request is being served.
    since: AtomicU64,
    /// Signalled when the connection is chosen to be closed.
    evict: Notify,
}

/// One admitted connection; dropping it (when the connection ends) unregisters it.
pub struct Conn {
    owner: Arc<Connections>,
    id: u64,
    slot: Arc<Slot>,
}

impl Connections {
    /// A registry for `listener` ("api", "admin": in logs and metric labels) holding at
    /// most `cap` connections.
    pub fn new(listener: &'static str, cap: usize, metrics: ConnMetrics) -> Arc<Connections> {
        Arc::new(Connections {
            listener,
            cap: cap.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            table: Mutex::new(HashMap::new()),
            metrics,
            at_cap_log: Throttled::new(LOG_INTERVAL),
            accept_log: Throttled::new(LOG_INTERVAL),
        })
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections registered now.
    pub fn open(&self) -> usize {
        self.table.lock().len()
    }

    fn now_mark(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Register a just-accepted connection, making room at the cap by closing the
    /// connections that have waited longest; `None` (the caller closes the connection) when
    /// all open connections are being served.
    pub fn admit(self: &Arc<Self>) -> Option<Arc<Conn>> {
        let slot = Arc::new(Slot {
            since: AtomicU64::new(self.now_mark()),
            evict: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (evicted, admitted) = {
            let mut table = self.table.lock();
            let evicted = if table.len() >= self.cap {
                evict_oldest(&mut table, EVICT_BATCH)
            } else {
                0
            };
            let admitted = table.len() < self.cap;
            if admitted {
                table.insert(id, slot.clone());
            }
            self.metrics.open.set(table.len() as i64);
            (evicted, admitted)
        };
        if evicted > 0 || !admitted {
            self.metrics.evicted.inc_by(evicted as u64);
            if !admitted {
                self.metrics.refused.inc();
            }
            if let Some(held) = self.at_cap_log.event(Instant::now()) {
                tracing::warn!(
                    listener = self.listener,
                    cap = self.cap,
                    evicted_total = self.metrics.evicted.get(),
                    refused_total = self.metrics.refused.get(),
                    repeats_not_logged = held,
                    "connection cap reached: closing the connections that waited longest for a \
                     complete request{}",
                    if admitted {
                        ""
                    } else {
                        "; all busy, refusing the new one"
                    }
                );
            }
        }
        admitted.then(|| {
            Arc::new(Conn {
                owner: self.clone(),
                id,
                slot,
            })
        })
    }

    /// Close up to `n` of the connections that have waited longest for a complete request
    /// (to free descriptors when `accept` runs out of them); returns how many.
    pub fn shed(&self, n: usize) -> usize {
        let evicted = {
            let mut table = self.table.lock();
            let e = evict_oldest(&mut table, n);
            self.metrics.open.set(table.len() as i64);
            e
        };
        self.metrics.evicted.inc_by(evicted as u64);
        evicted
    }

    /// Count and (rate-limited) log a failed `accept`; on running out of descriptors, close a
    /// batch of waiting connections to get some back.
    pub fn accept_failed(&self, error: &std::io::Error, retry_in: Duration) {
        self.metrics.accept_errors.inc();
        let out_of_fds = matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        let shed = if out_of_fds {
            self.shed(EVICT_BATCH)
        } else {
            0
        };
        if let Some(held) = self.accept_log.event(Instant::now()) {
            tracing::warn!(
                listener = self.listener,
                %error,
                retry_in_ms = retry_in.as_millis() as u64,
                closed_waiting_connections = shed,
                accept_errors_total = self.metrics.accept_errors.get(),
                repeats_not_logged = held,
                "accept failed; backing off"
            );
        }
    }
}

/// Remove the `n` entries that have waited longest (those being served excepted) and signal
/// their connections to close; returns how many.
fn evict_oldest(table: &mut HashMap<u64, Arc<Slot>>, n: usize) -> usize {
    let mut waiting: Vec<(u64, u64)> = table
        .iter()
        .filter_map(|(id, s)| {
            let since = s.since.load(Ordering::Relaxed);
            (since != 0).then_some((since, *id))
        })
        .collect();
    let n = n.min(waiting.len());
    if n == 0 {
        return 0;
    }
    if n < waiting.len() {
        waiting.select_nth_unstable(n - 1);
    }
    for &(_, id) in &waiting[..n] {
        if let Some(slot) = table.remove(&id) {
            slot.evict.notify_one();
        }
    }
    n
}

impl Conn {
    /// The request has been read in full and is being served: never closed to make room.
    pub fn serving(&self) {
        self.slot.since.store(0, Ordering::Relaxed);
    }

    /// The response is handed back: the connection waits for its next request from now.
    pub fn waiting(&self) {
        self.slot
            .since
            .store(self.owner.now_mark(), Ordering::Relaxed);
    }

    /// Resolves when the connection was chosen to be closed to make room.
    pub async fn evicted(&self) {
        self.slot.evict.notified().await
    }

    /// Count a request whose head did not arrive within the read timeout.
    pub fn head_timed_out(&self) {
        self.owner.metrics.head_timeouts.inc();
    }

    /// Count a request whose body did not arrive within the read timeout.
    pub fn body_timed_out(&self) {
        self.owner.metrics.body_timeouts.inc();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut table = self.owner.table.lock();
        table.remove(&self.id);
        self.owner.metrics.open.set(table.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn at_the_cap_the_longest_waiting_go_first_and_served_ones_stay() {
        let m = Metrics::new();
        let c = Connections::new("api", 40, m.connections("api"));
        let served = c.admit().unwrap();
        served.serving();
        let mut waiting: Vec<_> = (0..39).map(|_| c.admit().unwrap()).collect();
        // The youngest waiting connection, e.g. a client that just got its response.
        waiting[38].waiting();
        assert_eq!(c.open(), 40);
        let fresh = c.admit().expect("room is made");
        assert_eq!(c.open(), 40 - EVICT_BATCH + 1);
        assert!(c.table.lock().contains_key(&served.id));
        assert!(c.table.lock().contains_key(&waiting[38].id));
        assert!(c.table.lock().contains_key(&fresh.id));
        // The oldest were told to close.
        let oldest = waiting.remove(0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), oldest.evicted())
                .await
                .expect("evicted");
        });
        assert_eq!(m.connections("api").evicted.get(), EVICT_BATCH as u64);
        drop(waiting);
        assert_eq!(c.open(), 2);
    }

    #[test]
    fn all_served_means_refused() {
        let m = Metrics::new();
        let c = Connections::new("admin", 2, m.connections("admin"));
        let a = c.admit().unwrap();
        let b = c.admit().unwrap();
        a.serving();
        b.serving();
        assert!(c.admit().is_none());
        assert_eq!(m.connections("admin").refused.get(), 1);
        b.waiting();
        assert!(c.admit().is_some());
    }
}
