//! The backend's pool of R/W sessions on its token.
//!
//! Each backend call checks a session out, uses it exclusively (cryptoki's `Session` is `Send`
//! but not `Sync`) and gives it back. The pool lock guards only the idle list and the count,
//! never a call into the library, so checkout is a mutex lock and a `Vec::pop`.
//!
//! Sessions are opened with cryptoki's "no close on drop" so that dropping a dead session
//! (token reset, forked child) never calls into the library; live ones are closed explicitly.

use cryptoki::session::Session;
use parking_lot::{Condvar, Mutex};
use std::ops::Deref;
use std::time::{Duration, Instant};

struct State {
    idle: Vec<Session>,
    /// Sessions that exist: idle + checked out + being opened.
    total: usize,
    /// After `close_all`: returned sessions are closed, no new ones are handed out.
    closed: bool,
    /// Bumped by [`Pool::forget_all`] (the library was re-initialised): sessions of an older
    /// epoch are dropped without `C_CloseSession`, since their handle may now name a new
    /// session.
    epoch: u64,
}

/// Bounded set of sessions. Opening a session is the caller's job ([`Pool::take`] only
/// reserves the right to).
pub(crate) struct Pool {
    state: Mutex<State>,
    returned: Condvar,
    max: usize,
    wait: Duration,
}

/// What [`Pool::take`] hands out.
pub(crate) enum Take<'p> {
    /// An idle session, ready to use.
    Idle(Pooled<'p>),
    /// Room for one more session: open it and [`Reservation::fill`] it.
    Open(Reservation<'p>),
}

/// Why no session could be had.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// Every session stayed busy for the whole wait.
    TimedOut,
    /// The backend has shut down.
    Closed,
}

impl Pool {
    /// A pool of at most `max` sessions; a checkout waits at most `wait` for one to return.
    pub(crate) fn new(max: usize, wait: Duration) -> Pool {
        Pool {
            state: Mutex::new(State {
                idle: Vec::with_capacity(max),
                total: 0,
                closed: false,
                epoch: 0,
            }),
            returned: Condvar::new(),
            max: max.max(1),
            wait,
        }
    }

    /// An idle session, or else the right to open one if under the cap, or else wait for a
    /// session to come back. With `fresh_only`, idle sessions are not handed out (they may be
    /// stale after a token fault); at the cap an idle one is closed to make room instead.
    pub(crate) fn take(&self, fresh_only: bool) -> Result<Take<'_>, Unavailable> {
        // Read the clock only when a wait is needed: the common checkout finds an idle session.
        let mut deadline = None;
        let mut st = self.state.lock();
        loop {
            if st.closed {
                return Err(Unavailable::Closed);
            }
            if !fresh_only {
                if let Some(session) = st.idle.pop() {
                    return Ok(Take::Idle(Pooled::new(self, session, st.epoch)));
                }
            } else if st.total >= self.max {
                if let Some(stale) = st.idle.pop() {
                    st.total -= 1;
                    drop(st);
                    close_quietly(stale);
                    st = self.state.lock();
                    continue;
                }
            }
            if st.total < self.max {
                st.total += 1;
                return Ok(Take::Open(Reservation {
                    pool: self,
                    filled: false,
                    epoch: st.epoch,
                }));
            }
            let until = *deadline.get_or_insert_with(|| Instant::now() + self.wait);
            if self.returned.wait_until(&mut st, until).timed_out() {
                return Err(Unavailable::TimedOut);
            }
        }
    }

    /// Close every idle session (they are probably dead after a token fault, or we are
    /// shutting down). Sessions checked out now are dealt with as they come back.
    pub(crate) fn drain_idle(&self) {
        let idle = {
            let mut st = self.state.lock();
            st.total -= st.idle.len();
            std::mem::take(&mut st.idle)
        };
        self.returned.notify_all();
        idle.into_iter().for_each(close_quietly);
    }

    /// Forget every session without closing it: the library was finalized and initialised
    /// again, so every handle we hold is dead and may already name someone else's session.
    /// Sessions checked out now are forgotten as they come back.
    pub(crate) fn forget_all(&self) {
        let mut st = self.state.lock();
        st.total -= st.idle.len();
        st.idle.clear();
        st.epoch += 1;
        drop(st);
        self.returned.notify_all();
    }

    /// Refuse further checkouts and close every idle session; sessions in use are closed when
    /// they come back.
    pub(crate) fn close_all(&self) {
        self.state.lock().closed = true;
        self.drain_idle();
    }

    fn give_back(&self, session: Session, epoch: u64) {
        let mut st = self.state.lock();
        if st.epoch != epoch {
            st.total -= 1;
            drop(st);
            self.returned.notify_one();
            return;
        }
        if st.closed {
            st.total -= 1;
            drop(st);
            close_quietly(session);
            return;
        }
        st.idle.push(session);
        drop(st);
        self.returned.notify_one();
    }

    fn forget_one(&self) {
        self.state.lock().total -= 1;
        self.returned.notify_one();
    }
}

/// Close a session, ignoring errors: it may already be gone (token reset), which is why it
/// is being discarded in the first place.
fn close_quietly(session: Session) {
    let _ = session.close();
}

/// The right to add one session to the pool. Dropping it unfilled gives the room back.
pub(crate) struct Reservation<'p> {
    pool: &'p Pool,
    filled: bool,
    epoch: u64,
}

impl<'p> Reservation<'p> {
    /// Turn the reservation into a checked-out session.
    pub(crate) fn fill(mut self, session: Session) -> Pooled<'p> {
        self.filled = true;
        Pooled::new(self.pool, session, self.epoch)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.filled {
            self.pool.forget_one();
        }
    }
}

/// A checked-out session; it goes back to the pool when dropped unless discarded.
pub(crate) struct Pooled<'p> {
    pool: &'p Pool,
    session: Option<Session>,
    epoch: u64,
}

impl<'p> Pooled<'p> {
    fn new(pool: &'p Pool, session: Session, epoch: u64) -> Self {
        Pooled {
            pool,
            session: Some(session),
            epoch,
        }
    }

    /// Throw the session away (it failed): close it quietly and free its place in the pool.
    pub(crate) fn discard(mut self) {
        if let Some(session) = self.session.take() {
            let mut st = self.pool.state.lock();
            st.total -= 1;
            // After a re-initialisation the handle is not ours to close any more.
            let ours = st.epoch == self.epoch;
            drop(st);
            self.pool.returned.notify_one();
            if ours {
                close_quietly(session);
            }
        }
    }
}

impl Deref for Pooled<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Only `discard` (which consumes self) and `drop` take the session out.
        self.session
            .as_ref()
            .expect("pooled session present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool.give_back(session, self.epoch);
        }
    }
}
