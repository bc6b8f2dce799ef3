//! Calendar arithmetic for the status page: Unix days to Gregorian and Solar Hijri (Jalali) dates.

/// A calendar date; `month` and `day` are 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Date {
    pub year: i64,
    pub month: u8,
    pub day: u8,
}

const SECONDS_PER_DAY: i64 = 86_400;

/// Days in 400 Gregorian years, the period of the Gregorian calendar.
const DAYS_PER_GREGORIAN_ERA: i64 = 146_097;

/// Days from 0000-03-01 to 1970-01-01. Counting years from March puts the
/// leap day at the end of the year, which keeps the month arithmetic free of
/// special cases.
const MARCH_EPOCH_TO_UNIX_EPOCH: i64 = 719_468;

/// Days in 33 Jalali years, which hold exactly 8 leap years under the rule
/// in [`is_jalali_leap_year`].
const DAYS_PER_JALALI_CYCLE: i64 = 33 * 365 + 8;

/// 1 Farvardin 1403, the Persian new year of 2024-03-20, as Unix days.
const FARVARDIN_1403: i64 = 19_802;

/// The Unix day (days since 1970-01-01, UTC) holding `unix_seconds`.
pub fn unix_day(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(SECONDS_PER_DAY)
}

/// The Gregorian (proleptic) date of a Unix day.
pub fn gregorian_from_unix_day(unix_day: i64) -> Date {
    let days = unix_day + MARCH_EPOCH_TO_UNIX_EPOCH;
    let era = days.div_euclid(DAYS_PER_GREGORIAN_ERA);
    let day_of_era = days.rem_euclid(DAYS_PER_GREGORIAN_ERA);

    // Remove the leap days of the era before dividing by 365: one every 4
    // years, none every 100, one again on the 400th (the era's last day).
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524
        - day_of_era / (DAYS_PER_GREGORIAN_ERA - 1))
        / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);

    // Months from March run 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 31, 29:
    // five-month groups of 153 days, which this linear form maps exactly.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    Date {
        year,
        month: small(month),
        day: small(day),
    }
}

/// Whether Jalali `year` has 366 days.
///
/// This is the 33-year arithmetic rule. The official calendar follows the
/// vernal equinox as observed in Tehran, and the rule agrees with it for
/// every year from 1178 to 1634 (1799 to 2256 CE), which covers every
/// expiry date this service will ever show.
pub fn is_jalali_leap_year(year: i64) -> bool {
    (25 * year + 11).rem_euclid(33) < 8
}

/// The Solar Hijri (Jalali) date of a Unix day.
pub fn jalali_from_unix_day(unix_day: i64) -> Date {
    let since_anchor = unix_day - FARVARDIN_1403;
    let mut year = 1403 + 33 * since_anchor.div_euclid(DAYS_PER_JALALI_CYCLE);
    let mut day_of_year = since_anchor.rem_euclid(DAYS_PER_JALALI_CYCLE);
    loop {
        let year_length = if is_jalali_leap_year(year) { 366 } else { 365 };
        if day_of_year < year_length {
            break;
        }
        day_of_year -= year_length;
        year += 1;
    }

    // The first six months have 31 days, the next five 30, Esfand 29 or 30.
    let (month, day) = if day_of_year < 186 {
        (day_of_year / 31 + 1, day_of_year % 31 + 1)
    } else {
        let rest = day_of_year - 186;
        (rest / 30 + 7, rest % 30 + 1)
    };
    Date {
        year,
        month: small(month),
        day: small(day),
    }
}

/// A month or day number, known to be below 32 by construction.
fn small(value: i64) -> u8 {
    u8::try_from(value).unwrap_or(u8::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    fn date(year: i64, month: u8, day: u8) -> Date {
        Date { year, month, day }
    }

    /// Unix days of a Gregorian date, counted the slow obvious way.
    fn days_of(year: i64, month: u8, day: u8) -> i64 {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_lengths = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let mut days = 0;
        if year >= 1970 {
            for y in 1970..year {
                days += if leap(y) { 366 } else { 365 };
            }
        } else {
            for y in year..1970 {
                days -= if leap(y) { 366 } else { 365 };
            }
        }
        for m in 1..month {
            days += month_lengths[usize::from(m - 1)] + i64::from(m == 2 && leap(year));
        }
        days + i64::from(day) - 1
    }

    #[test]
    fn gregorian_dates_of_known_days() {
        assert_eq!(gregorian_from_unix_day(0), date(1970, 1, 1));
        assert_eq!(gregorian_from_unix_day(-1), date(1969, 12, 31));
        assert_eq!(gregorian_from_unix_day(FARVARDIN_1403), date(2024, 3, 20));
        assert_eq!(
            gregorian_from_unix_day(unix_day(951_782_400)),
            date(2000, 2, 29)
        );
        assert_eq!(
            gregorian_from_unix_day(unix_day(1_798_761_599)),
            date(2026, 12, 31)
        );
    }

    #[test]
    fn gregorian_agrees_with_counting_every_day_from_1800_to_2300() {
        let mut days = days_of(1800, 1, 1);
        for year in 1800..2300 {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            for month in 1..=12u8 {
                let length = match month {
                    2 if leap => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                for day in 1..=length {
                    assert_eq!(gregorian_from_unix_day(days), date(year, month, day));
                    days += 1;
                }
            }
        }
        assert_eq!(days, days_of(2300, 1, 1));
    }

    #[test]
    fn unix_day_rounds_down_before_1970() {
        assert_eq!(unix_day(86_399), 0);
        assert_eq!(unix_day(86_400), 1);
        assert_eq!(unix_day(-1), -1);
    }

    #[test]
    fn jalali_dates_of_known_days() {
        // 1 January 1970 is 11 Dey 1348.
        assert_eq!(jalali_from_unix_day(0), date(1348, 10, 11));
        // 11 February 1979 is 22 Bahman 1357.
        assert_eq!(
            jalali_from_unix_day(days_of(1979, 2, 11)),
            date(1357, 11, 22)
        );
        // 1 January 2000 is 11 Dey 1378.
        assert_eq!(
            jalali_from_unix_day(days_of(2000, 1, 1)),
            date(1378, 10, 11)
        );
        // Nowruz 1403 and 1404; 1403 is a leap year, so its Esfand has 30 days.
        assert_eq!(jalali_from_unix_day(days_of(2024, 3, 20)), date(1403, 1, 1));
        assert_eq!(
            jalali_from_unix_day(days_of(2025, 3, 20)),
            date(1403, 12, 30)
        );
        assert_eq!(jalali_from_unix_day(days_of(2025, 3, 21)), date(1404, 1, 1));
        // 1404 is not a leap year.
        assert_eq!(
            jalali_from_unix_day(days_of(2026, 3, 20)),
            date(1404, 12, 29)
        );
        assert_eq!(jalali_from_unix_day(days_of(2026, 3, 21)), date(1405, 1, 1));
        // The last day of the 31-day months, and the first of the 30-day ones.
        assert_eq!(
            jalali_from_unix_day(days_of(2026, 9, 22)),
            date(1405, 6, 31)
        );
        assert_eq!(jalali_from_unix_day(days_of(2026, 9, 23)), date(1405, 7, 1));
        assert_eq!(
            jalali_from_unix_day(days_of(2026, 12, 3)),
            date(1405, 9, 12)
        );
    }

    #[test]
    fn jalali_leap_years_follow_the_calendar() {
        let leap: Vec<i64> = (1370..=1410)
            .filter(|year| is_jalali_leap_year(*year))
            .collect();
        assert_eq!(
            leap,
            [1370, 1375, 1379, 1383, 1387, 1391, 1395, 1399, 1403, 1408]
        );
    }

    #[test]
    fn jalali_days_follow_each_other_from_1800_to_2300() {
        let mut previous = jalali_from_unix_day(days_of(1800, 1, 1) - 1);
        for day in days_of(1800, 1, 1)..days_of(2300, 1, 1) {
            let current = jalali_from_unix_day(day);
            let month_length = match previous.month {
                1..=6 => 31,
                7..=11 => 30,
                _ if is_jalali_leap_year(previous.year) => 30,
                _ => 29,
            };
            let expected = if previous.day < month_length {
                date(previous.year, previous.month, previous.day + 1)
            } else if previous.month < 12 {
                date(previous.year, previous.month + 1, 1)
            } else {
                date(previous.year + 1, 1, 1)
            };
            assert_eq!(current, expected, "unix day {day}");
            previous = current;
        }
    }
}
