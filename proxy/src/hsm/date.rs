//! The calendar date of CKA_END_DATE (a key's scheduled deletion), with the day arithmetic
//! deletion schedules need.

use std::time::{SystemTime, UNIX_EPOCH};

/// A calendar date (UTC), as stored in CKA_END_DATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// Year.
    pub y: i32,
    /// Month 1-12.
    pub m: u32,
    /// Day 1-31.
    pub d: u32,
}

impl Date {
    /// Today (UTC).
    pub fn today() -> Date {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Date::from_days((secs / 86_400) as i64)
    }

    /// Date `n` days after this one.
    pub fn plus_days(self, n: i64) -> Date {
        Date::from_days(self.to_days() + n)
    }

    /// Civil date from days since 1970-01-01 (the one copy of the day arithmetic lives in
    /// the module's `timefmt`).
    pub fn from_days(z: i64) -> Date {
        let (y, m, d) = xki_pkcs11::timefmt::civil_from_days(z);
        Date { y: y as i32, m, d }
    }

    /// Days since 1970-01-01.
    pub fn to_days(self) -> i64 {
        xki_pkcs11::timefmt::days_from_civil(i64::from(self.y), self.m, self.d)
    }

    pub(super) fn to_ck(self) -> cryptoki::types::Date {
        let s = format!("{:04}{:02}{:02}", self.y, self.m, self.d);
        let b = s.as_bytes();
        cryptoki::types::Date::new([b[0], b[1], b[2], b[3]], [b[4], b[5]], [b[6], b[7]])
    }

    pub(super) fn from_ck(d: &cryptoki::types::Date) -> Option<Date> {
        if d.is_empty() {
            return None;
        }
        let num =
            |bytes: &[u8]| -> Option<u32> { std::str::from_utf8(bytes).ok()?.trim().parse().ok() };
        let y = num(&d.year)?;
        let m = num(&d.month)?;
        let dd = num(&d.day)?;
        if y == 0 || !(1..=12).contains(&m) || !(1..=31).contains(&dd) {
            return None;
        }
        Some(Date {
            y: y as i32,
            m,
            d: dd,
        })
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.y, self.m, self.d)
    }
}

#[cfg(test)]
mod tests {
    use super::Date;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(
            Date::from_days(0),
            Date {
                y: 1970,
                m: 1,
                d: 1
            }
        );
        assert_eq!(
            Date::from_days(20_513),
            Date {
                y: 2026,
                m: 3,
                d: 1
            }
        );
        for z in [-1000, 0, 59, 60, 11_016, 20_000, 50_000] {
            assert_eq!(Date::from_days(z).to_days(), z);
        }
        assert_eq!(
            Date {
                y: 2024,
                m: 2,
                d: 28
            }
            .plus_days(1),
            Date {
                y: 2024,
                m: 2,
                d: 29
            }
        );
    }
}
