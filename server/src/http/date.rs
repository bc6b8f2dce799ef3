//! The `Date` header value (IMF-fixdate), formatted at most once a second
//! per connection.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`.
const LEN: usize = 29;

/// A per-connection cache: each connection keeps its own copy, so reading
/// the date costs a clock read and no lock.
pub(super) struct DateCache {
    second: u64,
    text: [u8; LEN],
}

impl DateCache {
    pub(super) fn new() -> DateCache {
        DateCache {
            second: u64::MAX,
            text: [0; LEN],
        }
    }

    /// The current date, reformatted only when the second has changed.
    pub(super) fn now(&mut self) -> &[u8] {
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or_default();
        if second != self.second {
            self.second = second;
            self.text = format(second);
        }
        &self.text
    }
}

const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Formats seconds since the Unix epoch as an IMF-fixdate.
fn format(unix_seconds: u64) -> [u8; LEN] {
    let days = unix_seconds / 86_400;
    let second_of_day = unix_seconds % 86_400;
    let (year, month, day) = civil_date(days);

    let mut text = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    // 1970-01-01 was a Thursday, the first entry of DAYS.
    text[0..3].copy_from_slice(DAYS[(days % 7) as usize]);
    put_two(&mut text[5..7], day);
    text[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    put_two(&mut text[12..14], year / 100);
    put_two(&mut text[14..16], year % 100);
    put_two(&mut text[17..19], second_of_day / 3600);
    put_two(&mut text[20..22], second_of_day / 60 % 60);
    put_two(&mut text[23..25], second_of_day % 60);
    text
}

fn put_two(slot: &mut [u8], value: u64) {
    slot[0] = b'0' + (value / 10 % 10) as u8;
    slot[1] = b'0' + (value % 10) as u8;
}

/// The proleptic Gregorian (year, month, day) of a day count since
/// 1970-01-01. The calendar repeats every 400 years (146,097 days); counting
/// from 0000-03-01 puts the leap day at the end of each year, so the month
/// lengths inside a year follow a fixed pattern.
fn civil_date(days_since_epoch: u64) -> (u64, u64, u64) {
    // 719,468 days separate 0000-03-01 from 1970-01-01.
    let days = days_since_epoch + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March: 153 days per five months.
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_are_formatted() {
        let cases = [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 GMT"),
            (4_102_444_800, "Fri, 01 Jan 2100 00:00:00 GMT"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(
                std::str::from_utf8(&format(seconds)).expect("ascii"),
                expected
            );
        }
    }

    #[test]
    fn the_cache_gives_a_current_date() {
        let mut cache = DateCache::new();
        let text = cache.now().to_vec();
        assert_eq!(text.len(), LEN);
        assert!(text.ends_with(b" GMT"));
    }
}
