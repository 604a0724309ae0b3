//! Calendar and timestamp formatting, without a date crate: the one copy of the day
//! arithmetic (the proxy's key-deletion dates use it too) and the RFC 3339 timestamps of log
//! and audit lines.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01: the inverse of [`civil_from_days`].
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The wall-clock time since the Unix epoch: one `clock_gettime(CLOCK_REALTIME)` (a vDSO
/// call), without `SystemTime`'s checked arithmetic around it (this runs for every record).
pub fn wall_clock() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call; CLOCK_REALTIME always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 {
        return SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// [`utc_timestamp`] appended to `out` without formatting machinery. The part down to the
/// second is computed once per second per thread (`YYYY-MM-DDTHH:MM:SS.`), so a record pays
/// only for its milliseconds.
pub fn push_timestamp(out: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        static PREFIX: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let prefix = PREFIX
        .try_with(|cache| {
            let (cached, prefix) = cache.get();
            if cached == secs {
                return prefix;
            }
            let prefix = second_prefix(secs);
            cache.set((secs, prefix));
            prefix
        })
        .unwrap_or_else(|_| second_prefix(secs));
    out.extend_from_slice(&prefix);
    let ms = d.subsec_millis();
    out.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the epoch.
fn second_prefix(secs: u64) -> [u8; 20] {
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut v = Vec::with_capacity(20);
    push_digits(&mut v, y.clamp(0, 9999) as u64, 4);
    v.push(b'-');
    push_digits(&mut v, u64::from(m), 2);
    v.push(b'-');
    push_digits(&mut v, u64::from(day), 2);
    v.push(b'T');
    push_digits(&mut v, rem / 3600, 2);
    v.push(b':');
    push_digits(&mut v, (rem % 3600) / 60, 2);
    v.push(b':');
    push_digits(&mut v, rem % 60, 2);
    v.push(b'.');
    let mut out = [0u8; 20];
    out.copy_from_slice(&v);
    out
}

/// `n` in decimal, zero-padded to at least `width` digits.
pub fn push_digits(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    while digits.len() - i < width && i > 0 {
        i -= 1;
        digits[i] = b'0';
    }
    out.extend_from_slice(&digits[i..]);
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(utc_timestamp(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        for t in [
            UNIX_EPOCH,
            t,
            UNIX_EPOCH + Duration::from_millis(4_102_444_799_999),
        ] {
            let mut out = Vec::new();
            push_timestamp(&mut out, t);
            assert_eq!(String::from_utf8(out).unwrap(), utc_timestamp(t));
        }
        let mut out = Vec::new();
        push_digits(&mut out, 0, 1);
        push_digits(&mut out, 7, 3);
        push_digits(&mut out, 18_446_744_073_709_551_615, 2);
        assert_eq!(
            out,
            b"0007"
                .iter()
                .chain(b"18446744073709551615")
                .copied()
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn days_round_trip() {
        for z in [-1000, 0, 59, 60, 11_016, 19_782, 20_000, 50_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
