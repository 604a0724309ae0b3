//! The cap on open client connections of one listener, and who goes first when it is reached.
//!
//! Every accepted connection is registered with the time it started waiting for a request:
//! at accept, and again each time a response has been handed back. A connection whose request
//! has been read in full is being served and is never closed to make room; one that has
//! carried a correctly signed request (a KMS's keep-alive connection) is closed only when no
//! other waiting connection is left. A connection counts
//! until its socket is closed, and the accept loop asks for room *before* it accepts, so the
//! listener never holds more than the cap in descriptors (+1 for a refusal). At the cap the
//! connections that have waited longest for a complete request (the slow and the unfinished,
//! and idle keep-alive connections before fresh ones) are closed, a batch at a time, and the
//! accept loop waits for their sockets to be gone before it accepts the next connection; only
//! when every open connection is being served is the next one accepted and closed at once. A
//! legitimate client, which sends its request as soon as it is connected and is then served,
//! is thus never the one to go while a flood of slow or unfinished connections is open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::throttled::Throttled;
use crate::metrics::ConnMetrics;

/// How many waiting connections are closed at once when the cap is reached: a batch, so that
/// a flood at the cap does not scan the table for every accept.
const EVICT_BATCH: usize = 32;
/// At most one "cap reached" and one "accept failed" line per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The longest the accept loop waits for evicted connections to close before looking again.
const ROOM_WAIT: Duration = Duration::from_millis(200);

/// The open connections of one listener.
pub struct Connections {
    listener: &'static str,
    cap: usize,
    epoch: Instant,
    next_id: AtomicU64,
    table: Mutex<HashMap<u64, Arc<Slot>>>,
    /// Signalled whenever a connection is gone.
    freed: Notify,
    metrics: ConnMetrics,
    at_cap_log: Throttled,
    accept_log: Throttled,
}

/// What the registry knows of one connection.
struct Slot {
    /// Nanoseconds since `epoch` (+1) at which the connection started waiting for its current
    /// request; 0 while a fully read request is being served.
    since: AtomicU64,
    /// Chosen to be closed; still counted until its socket is gone.
    evicting: AtomicBool,
    /// Has carried a correctly signed request: closed to make room only when no other
    /// waiting connection is left.
    trusted: AtomicBool,
    /// Signalled when the connection is chosen to be closed.
    evict: Notify,
}

/// One admitted connection; dropping it (when the connection ends) unregisters it.
pub struct Conn {
    owner: Arc<Connections>,
    id: u64,
    slot: Arc<Slot>,
}

/// Whether the next connection may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Below the cap: accept and serve.
    Free,
    /// At the cap and every connection is being served: accept and close at once (rather
    /// than leave the client in the backlog past its deadline).
    Full,
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
            freed: Notify::new(),
            metrics,
            at_cap_log: Throttled::new(LOG_INTERVAL),
            accept_log: Throttled::new(LOG_INTERVAL),
        })
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections open now (those being closed included).
    pub fn open(&self) -> usize {
        self.table.lock().len()
    }

    fn now_mark(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Wait until one more connection fits under the cap, closing the connections that have
    /// waited longest for a complete request when it is reached. Cancel-safe.
    pub async fn room(&self) -> Room {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a connection gone in between is not missed.
            freed.as_mut().enable();
            let (evicted, pending) = {
                let table = self.table.lock();
                if table.len() < self.cap {
                    return Room::Free;
                }
                let pending = table
                    .values()
                    .filter(|s| s.evicting.load(Ordering::Relaxed))
                    .count();
                let evicted = if pending == 0 {
                    evict_oldest(&table, EVICT_BATCH)
                } else {
                    0
                };
                (evicted, pending)
            };
            self.metrics.evicted.inc_by(evicted as u64);
            if evicted == 0 && pending == 0 {
                self.metrics.refused.inc();
                self.log_at_cap(false);
                return Room::Full;
            }
            if evicted > 0 {
                self.log_at_cap(true);
            }
            let _ = tokio::time::timeout(ROOM_WAIT, freed).await;
        }
    }

    fn log_at_cap(&self, made_room: bool) {
        if let Some(held) = self.at_cap_log.event(Instant::now()) {
            tracing::warn!(
                listener = self.listener,
                cap = self.cap,
                evicted_total = self.metrics.evicted.get(),
                refused_total = self.metrics.refused.get(),
                repeats_not_logged = held,
                "connection cap reached: {}",
                if made_room {
                    "closing the connections that waited longest for a complete request"
                } else {
                    "every connection is being served; closing new ones at once"
                }
            );
        }
    }

    /// Register a just-accepted connection (after [`Connections::room`] said
    /// [`Room::Free`]).
    pub fn register(self: &Arc<Self>) -> Arc<Conn> {
        let slot = Arc::new(Slot {
            since: AtomicU64::new(self.now_mark()),
            evicting: AtomicBool::new(false),
            trusted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut table = self.table.lock();
            table.insert(id, slot.clone());
            self.metrics.open.set(table.len() as i64);
        }
        Arc::new(Conn {
            owner: self.clone(),
            id,
            slot,
        })
    }

    /// Close up to `n` of the connections that have waited longest for a complete request
    /// (to free descriptors when `accept` runs out of them); returns how many.
    pub fn shed(&self, n: usize) -> usize {
        let evicted = evict_oldest(&self.table.lock(), n);
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

/// Signal the `n` connections that have waited longest (those being served, or already
/// being closed, excepted) to close, connections that never carried a signed request first;
/// returns how many.
fn evict_oldest(table: &HashMap<u64, Arc<Slot>>, n: usize) -> usize {
    let mut waiting: Vec<((bool, u64), &Arc<Slot>)> = table
        .values()
        .filter(|s| !s.evicting.load(Ordering::Relaxed))
        .filter_map(|s| {
            let since = s.since.load(Ordering::Relaxed);
            let trusted = s.trusted.load(Ordering::Relaxed);
            (since != 0).then_some(((trusted, since), s))
        })
        .collect();
    let n = n.min(waiting.len());
    if n == 0 {
        return 0;
    }
    if n < waiting.len() {
        waiting.select_nth_unstable_by_key(n - 1, |(key, _)| *key);
    }
    for (_, slot) in &waiting[..n] {
        slot.evicting.store(true, Ordering::Relaxed);
        slot.evict.notify_one();
    }
    n
}

impl Conn {
    /// The request has been read in full and is being served: never closed to make room.
    pub fn serving(&self) {
        self.slot.since.store(0, Ordering::Relaxed);
    }

    /// The request carried a valid signature: this connection goes last when room is made.
    pub fn authenticated(&self) {
        self.slot.trusted.store(true, Ordering::Relaxed);
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
        {
            let mut table = self.owner.table.lock();
            table.remove(&self.id);
            self.owner.metrics.open.set(table.len() as i64);
        }
        self.owner.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn at_the_cap_the_longest_waiting_go_first_and_served_ones_stay() {
        let m = Metrics::new();
        let c = Connections::new("api", 40, m.connections("api"));
        let served = c.register();
        served.serving();
        let mut waiting: Vec<_> = (0..39).map(|_| Some(c.register())).collect();
        // The youngest waiting connection, e.g. a client that just got its response.
        waiting[38].as_ref().unwrap().waiting();
        assert_eq!(c.open(), 40);
        block_on(async {
            // The accept loop waits for room; the connection tasks close when told to (here:
            // the oldest waiting ones are dropped when signalled).
            let closer = async {
                let mut closed = 0;
                for w in waiting.iter_mut().take(EVICT_BATCH) {
                    tokio::time::timeout(Duration::from_secs(1), w.as_ref().unwrap().evicted())
                        .await
                        .expect("the oldest are told to close");
                    *w = None;
                    closed += 1;
                }
                closed
            };
            let (room, closed) = tokio::join!(c.room(), closer);
            assert_eq!((room, closed), (Room::Free, EVICT_BATCH));
        });
        assert_eq!(c.open(), 40 - EVICT_BATCH);
        assert!(c.table.lock().contains_key(&served.id));
        assert!(waiting[38].is_some());
        let younger = waiting[EVICT_BATCH].as_ref().unwrap();
        assert!(!younger.slot.evicting.load(Ordering::Relaxed));
        assert_eq!(m.connections("api").evicted.get(), EVICT_BATCH as u64);
        drop(waiting);
        assert_eq!(c.open(), 1);
    }

    #[test]
    fn signed_connections_go_last() {
        let m = Metrics::new();
        let c = Connections::new("api", 64, m.connections("api"));
        let kms = c.register();
        kms.authenticated();
        let flood: Vec<_> = (0..63).map(|_| c.register()).collect();
        assert_eq!(evict_oldest(&c.table.lock(), 63), 63);
        assert!(!kms.slot.evicting.load(Ordering::Relaxed));
        assert!(flood
            .iter()
            .all(|f| f.slot.evicting.load(Ordering::Relaxed)));
        assert_eq!(evict_oldest(&c.table.lock(), 1), 1);
        assert!(kms.slot.evicting.load(Ordering::Relaxed));
    }

    #[test]
    fn all_served_means_full() {
        let m = Metrics::new();
        let c = Connections::new("admin", 2, m.connections("admin"));
        let a = c.register();
        let b = c.register();
        a.serving();
        b.serving();
        assert_eq!(block_on(c.room()), Room::Full);
        assert_eq!(m.connections("admin").refused.get(), 1);
        drop(b);
        assert_eq!(block_on(c.room()), Room::Free);
    }
}
