//! The log's writer thread, waking at most once per gathering interval under load.
//!
//! Every served request logs a line. Handing each line to a writer thread that wakes per line
//! (what `tracing-appender` does) costs a futex wake on the async worker, a thread switch and a
//! `write(2)` per request: measured side by side on W1, the request log was 7-13 % of the
//! server's CPU per request, most of it those wake-ups (README: Performance). Here callers
//! append whole lines to one buffer under a short lock; the writer thread writes the first line
//! after a quiet spell at once, then gathers for [`GATHER`] before it looks again, so a busy
//! server writes all of an interval's lines with one `write(2)` and one wake-up.
//!
//! Lossless: a caller whose line would take the buffer past [`MAX_QUEUED`] waits until the
//! writer has taken the buffer (as a lossless `tracing-appender` made it wait). Lines still
//! queued are written when the [`Flusher`] is dropped; a crash loses at most the lines of the
//! last interval.

use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long the writer gathers lines after a write before it writes again.
pub const GATHER: Duration = Duration::from_millis(20);
/// Queued bytes past which the writer is woken early, before its interval ends.
const WAKE_EARLY: usize = 256 * 1024;
/// Queued bytes past which a caller waits for the writer (lossless back-pressure).
pub const MAX_QUEUED: usize = 8 * 1024 * 1024;

struct Queue {
    lines: Vec<u8>,
    /// The writer is waiting for a first line (not gathering): the next line wakes it.
    writer_idle: bool,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer: a first line, a full buffer, or closing.
    to_writer: Condvar,
    /// Wakes callers waiting for room.
    drained: Condvar,
    gather: Duration,
    max_queued: usize,
}

/// The callers' side: cheap to clone, one per `tracing` event (`MakeWriter`).
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Owns the writer thread; dropping it writes every queued line and ends the thread.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Start the writer thread over `sink` with the default interval and bound.
pub fn start<W: Write + Send + 'static>(sink: W) -> (BatchWriter, Flusher) {
    start_with(sink, GATHER, MAX_QUEUED)
}

fn start_with<W: Write + Send + 'static>(
    sink: W,
    gather: Duration,
    max_queued: usize,
) -> (BatchWriter, Flusher) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            lines: Vec::with_capacity(64 * 1024),
            writer_idle: false,
            closed: false,
        }),
        to_writer: Condvar::new(),
        drained: Condvar::new(),
        gather,
        max_queued,
    });
    let for_thread = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("xki-log-writer".into())
        .spawn(move || write_loop(&for_thread, sink))
        .expect("spawn the log writer thread");
    (
        BatchWriter {
            shared: Arc::clone(&shared),
        },
        Flusher {
            shared,
            thread: Some(thread),
        },
    )
}

fn write_loop<W: Write>(shared: &Shared, mut sink: W) {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        {
            let mut q = shared.queue.lock();
            while q.lines.is_empty() {
                if q.closed {
                    return;
                }
                q.writer_idle = true;
                shared.to_writer.wait(&mut q);
            }
            q.writer_idle = false;
            std::mem::swap(&mut q.lines, &mut spare);
            shared.drained.notify_all();
        }
        // A failing stderr (closed pipe, full disk) must not stall the server or grow the
        // queue without bound: the batch is dropped, as a lossy writer would.
        let _ = sink.write_all(&spare).and_then(|()| sink.flush());
        spare.clear();
        let deadline = Instant::now() + shared.gather;
        let mut q = shared.queue.lock();
        while !q.closed && q.lines.len() < WAKE_EARLY {
            if shared.to_writer.wait_until(&mut q, deadline).timed_out() {
                break;
            }
        }
    }
}

impl BatchWriter {
    fn push(&self, line: &[u8]) {
        let shared = &*self.shared;
        let mut q = shared.queue.lock();
        while !q.lines.is_empty() && q.lines.len() + line.len() > shared.max_queued && !q.closed {
            shared.to_writer.notify_one();
            shared.drained.wait(&mut q);
        }
        if q.closed {
            // The writer thread is gone (the server stopped): nobody would write this line,
            // and keeping it would only grow the buffer (tracing-appender dropped such lines
            // too).
            return;
        }
        q.lines.extend_from_slice(line);
        let wake = q.writer_idle || q.lines.len() >= WAKE_EARLY;
        if wake {
            q.writer_idle = false;
        }
        drop(q);
        if wake {
            shared.to_writer.notify_one();
        }
    }
}

impl Write for BatchWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.to_writer.notify_one();
        self.shared.drained.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, counting its `write_all` batches (one `write` call each here).
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut r = self.0.lock();
            r.0.extend_from_slice(buf);
            r.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().0.clone()).unwrap()
        }
        fn writes(&self) -> usize {
            self.0.lock().1
        }
    }

    fn wait_for(what: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn a_line_after_a_quiet_spell_is_written_at_once() {
        let sink = Recorder::default();
        // An interval far longer than the test may wait: only the idle path can pass.
        let (mut w, _flusher) = start_with(sink.clone(), Duration::from_secs(3600), MAX_QUEUED);
        w.write_all(b"first\n").unwrap();
        assert!(
            wait_for(|| sink.text() == "first\n"),
            "got {:?}",
            sink.text()
        );
    }

    #[test]
    fn lines_during_the_interval_go_out_in_one_write_at_drop() {
        let sink = Recorder::default();
        let (mut w, flusher) = start_with(sink.clone(), Duration::from_secs(3600), MAX_QUEUED);
        w.write_all(b"line 0\n").unwrap();
        assert!(wait_for(|| sink.writes() == 1));
        for i in 1..100 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        // Gathering: nothing more is written before the interval ends or the flusher drops.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(sink.writes(), 1);
        drop(flusher);
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(sink.text(), want);
        assert_eq!(sink.writes(), 2, "the 99 gathered lines in one write");
    }

    #[test]
    fn lines_after_the_flusher_is_dropped_are_not_kept() {
        let sink = Recorder::default();
        let (mut w, flusher) = start_with(sink.clone(), Duration::from_secs(3600), MAX_QUEUED);
        w.write_all(b"before\n").unwrap();
        drop(flusher);
        w.write_all(b"after\n").unwrap();
        assert_eq!(sink.text(), "before\n");
        assert!(w.shared.queue.lock().lines.is_empty());
    }

    #[test]
    fn a_busy_writer_writes_once_per_interval() {
        let sink = Recorder::default();
        let (mut w, flusher) = start_with(sink.clone(), Duration::from_millis(50), MAX_QUEUED);
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_millis(500) {
            w.write_all(format!("line {n}\n").as_bytes()).unwrap();
            n += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        drop(flusher);
        let want: String = (0..n).map(|i| format!("line {i}\n")).collect();
        assert_eq!(sink.text(), want);
        // ~10 intervals in 500 ms; a writer woken per line would have made ~n writes.
        assert!(n > 200, "only {n} lines");
        assert!(
            sink.writes() <= 30,
            "{} writes for {n} lines",
            sink.writes()
        );
    }

    #[test]
    fn a_full_queue_makes_callers_wait_and_loses_nothing() {
        /// A sink slower than the callers, so the small bound is reached again and again.
        #[derive(Clone, Default)]
        struct Slow(Recorder);
        impl Write for Slow {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_millis(2));
                self.0.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Slow::default();
        let (w, flusher) = start_with(sink.clone(), Duration::from_millis(1), 64);
        let callers: Vec<_> = (0..4)
            .map(|t| {
                let mut w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        w.write_all(format!("t{t} {i:03}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        drop(flusher);
        let text = sink.0.text();
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let want: Vec<String> = (0..200).map(|i| format!("t{t} {i:03}")).collect();
            assert_eq!(mine, want, "caller {t}'s lines, in order");
        }
        assert_eq!(text.lines().count(), 800);
        assert!(sink.0.writes() > 10, "the bound forced many small writes");
    }
}
