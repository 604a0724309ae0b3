//! `accept` that backs off instead of spinning: a listener out of descriptors (EMFILE,
//! ENFILE) or kernel memory (ENOBUFS, ENOMEM) stays readable, so retrying at once would burn
//! a CPU and write a log line per attempt. Errors that concern only the one connection being
//! accepted (the peer reset or aborted it) are skipped without a pause.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::conns::Connections;

/// Listen backlog asked for (the kernel caps it at `net.core.somaxconn`). tokio's
/// `TcpListener::bind` asks for 128 here, which a connection flood fills in a moment; new
/// clients, legitimate ones included, then wait a second for their SYN to be retransmitted.
const BACKLOG: u32 = 4096;

/// Bind a listening socket with [`BACKLOG`] (and `SO_REUSEADDR`, as `TcpListener::bind`).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// First pause after a failed accept.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between attempts while accept keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listener with its back-off state.
pub struct Acceptor {
    listener: TcpListener,
    backoff: Duration,
}

impl Acceptor {
    /// Wrap a bound listener.
    pub fn new(listener: TcpListener) -> Acceptor {
        Acceptor {
            listener,
            backoff: Duration::ZERO,
        }
    }

    /// The next connection. Failures are counted and logged (rate-limited) through `conns`,
    /// which also frees descriptors when they ran out, and retried after a pause growing from
    /// 5 ms to 1 s; one success resets it. Cancel-safe (a `select!` branch).
    pub async fn next(&mut self, conns: &Connections) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(c) => {
                    self.backoff = Duration::ZERO;
                    return c;
                }
                Err(e) if concerns_one_connection(&e) => continue,
                Err(e) => {
                    self.backoff = next_backoff(self.backoff);
                    conns.accept_failed(&e, self.backoff);
                    tokio::time::sleep(self.backoff).await;
                }
            }
        }
    }
}

/// The pause after one more failure.
pub fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        FIRST_BACKOFF
    } else {
        (current * 2).min(MAX_BACKOFF)
    }
}

/// An accept error about the connection being accepted, not the listener.
fn concerns_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_ceiling() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            d = next_backoff(d);
            seen.push(d.as_millis());
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    #[test]
    fn classification() {
        assert!(concerns_one_connection(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(!concerns_one_connection(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(!concerns_one_connection(&io::Error::from_raw_os_error(
            libc::ENOBUFS
        )));
    }
}
