//! The file-descriptor budget: raise `RLIMIT_NOFILE` to its hard limit at start-up and split
//! it between client connections and everything else (the PKCS#11 library and its files,
//! SoftHSM2's object files, audit and log files, listeners), so a flood of clients can never
//! take the descriptors the HSM side needs.

/// Connections the admin listener (`/metrics`, `/ping`) may hold; part of the reserve.
pub const ADMIN_MAX_CONNECTIONS: usize = 32;
/// The most client connections the derived default allows, whatever the descriptor limit
/// (each open connection holds buffers: memory, not descriptors, is then the limit).
pub const AUTO_MAX_CONNECTIONS: usize = 65_536;
/// Fewer client connections than this and the proxy refuses to start: the limit is too low.
const MIN_CONNECTIONS: usize = 16;

/// The process's descriptor limits before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimits {
    /// Soft limit found at start.
    pub soft_before: u64,
    /// Soft limit in force now.
    pub soft: u64,
    /// Hard limit (the ceiling an unprivileged process may raise the soft limit to).
    pub hard: u64,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit. A failure leaves the soft limit as it was
/// (and is reported in the result's `soft`), it does not stop the server.
pub fn raise_nofile() -> NofileLimits {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return NofileLimits {
            soft_before: 1024,
            soft: 1024,
            hard: 1024,
        };
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from a struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    NofileLimits {
        soft_before: before,
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    }
}

/// The cap on open API connections: `configured` when set (0 = derive), else the soft
/// limit minus `reserve` minus the admin listener's share, at most [`AUTO_MAX_CONNECTIONS`].
/// A configured cap that would eat into the reserve, or a limit too low to serve anything,
/// is an error naming what to change.
pub fn connection_cap(soft_limit: u64, reserve: u64, configured: usize) -> Result<usize, String> {
    let room = soft_limit
        .saturating_sub(reserve)
        .saturating_sub(ADMIN_MAX_CONNECTIONS as u64);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if room < MIN_CONNECTIONS {
        return Err(format!(
            "the descriptor limit ({soft_limit}) leaves {room} client connections after \
             clients.fd_reserve ({reserve}) and the admin listener ({ADMIN_MAX_CONNECTIONS}); \
             raise the hard limit (systemd LimitNOFILE=, ulimit -Hn) or lower fd_reserve"
        ));
    }
    match configured {
        0 => Ok(room.min(AUTO_MAX_CONNECTIONS)),
        n if n > room => Err(format!(
            "clients.max_connections = {n} does not fit the descriptor limit ({soft_limit}) \
             minus clients.fd_reserve ({reserve}) and the admin listener \
             ({ADMIN_MAX_CONNECTIONS}): at most {room}; raise the hard limit or lower it"
        )),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_limit_minus_reserve() {
        assert_eq!(connection_cap(1024, 256, 0), Ok(1024 - 256 - 32));
        assert_eq!(connection_cap(1 << 20, 256, 0), Ok(AUTO_MAX_CONNECTIONS));
        assert_eq!(connection_cap(1024, 256, 100), Ok(100));
        assert!(connection_cap(1024, 256, 900)
            .unwrap_err()
            .contains("max_connections"));
        assert!(connection_cap(300, 256, 0)
            .unwrap_err()
            .contains("fd_reserve"));
    }

    #[test]
    fn raise_reaches_the_hard_limit() {
        let l = raise_nofile();
        assert_eq!(l.soft, l.hard);
        assert!(l.soft >= l.soft_before);
    }
}
