//! The words and number formats of the status page, in Persian and English.

use super::calendar::Date;
use super::{Lang, UserState};

/// The fixed strings of one language.
pub(super) struct Text {
    pub code: &'static str,
    pub dir: &'static str,
    pub title: &'static str,
    pub usage: &'static str,
    pub of: &'static str,
    pub unlimited: &'static str,
    pub expiry: &'static str,
    pub no_expiry: &'static str,
    pub solar_hijri: &'static str,
    pub gregorian: &'static str,
    pub link: &'static str,
    pub link_hint: &'static str,
    pub copy: &'static str,
    pub copied: &'static str,
    pub qr_label: &'static str,
    pub qr_caption: &'static str,
    pub not_found_title: &'static str,
    pub not_found_text: &'static str,
    units: [&'static str; 5],
    gregorian_months: [&'static str; 12],
    jalali_months: [&'static str; 12],
}

const PERSIAN: Text = Text {
    code: "fa",
    dir: "rtl",
    title: "وضعیت اشتراک",
    usage: "مصرف",
    of: "از",
    unlimited: "نامحدود",
    expiry: "انقضا",
    no_expiry: "بدون تاریخ انقضا",
    solar_hijri: "شمسی",
    gregorian: "میلادی",
    link: "لینک اشتراک",
    link_hint: "این لینک را در برنامه‌ای مانند v2rayNG، Hiddify یا Streisand وارد کنید، یا کد زیر را با آن اسکن کنید.",
    copy: "کپی لینک",
    copied: "کپی شد",
    qr_label: "کد QR لینک اشتراک",
    qr_caption: "برای افزودن در گوشی، این کد را با برنامه‌ی VPN اسکن کنید.",
    not_found_title: "اشتراک پیدا نشد",
    not_found_text: "این لینک به هیچ اشتراکی تعلق ندارد. لینک را بررسی کنید یا از فروشنده‌ی خود لینک تازه بگیرید.",
    units: ["بایت", "کیلوبایت", "مگابایت", "گیگابایت", "ترابایت"],
    gregorian_months: [
        "ژانویه",
        "فوریه",
        "مارس",
        "آوریل",
        "مه",
        "ژوئن",
        "ژوئیه",
        "اوت",
        "سپتامبر",
        "اکتبر",
        "نوامبر",
        "دسامبر",
    ],
    jalali_months: [
        "فروردین",
        "اردیبهشت",
        "خرداد",
        "تیر",
        "مرداد",
        "شهریور",
        "مهر",
        "آبان",
        "آذر",
        "دی",
        "بهمن",
        "اسفند",
    ],
};

const ENGLISH: Text = Text {
    code: "en",
    dir: "ltr",
    title: "Subscription status",
    usage: "Usage",
    of: "of",
    unlimited: "Unlimited",
    expiry: "Expiry",
    no_expiry: "No expiry",
    solar_hijri: "Solar Hijri",
    gregorian: "Gregorian",
    link: "Subscription link",
    link_hint: "Add this link to an app such as v2rayNG, Hiddify or Streisand, or scan the code below with it.",
    copy: "Copy link",
    copied: "Copied",
    qr_label: "QR code of the subscription link",
    qr_caption: "To add it on a phone, scan this code with your VPN app.",
    not_found_title: "Subscription not found",
    not_found_text: "This link does not belong to any subscription. Check the link, or ask your provider for a new one.",
    units: ["B", "KB", "MB", "GB", "TB"],
    gregorian_months: [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
    jalali_months: [
        "Farvardin",
        "Ordibehesht",
        "Khordad",
        "Tir",
        "Mordad",
        "Shahrivar",
        "Mehr",
        "Aban",
        "Azar",
        "Dey",
        "Bahman",
        "Esfand",
    ],
};

impl Text {
    pub fn of(lang: Lang) -> &'static Text {
        match lang {
            Lang::Fa => &PERSIAN,
            Lang::En => &ENGLISH,
        }
    }

    fn lang(&self) -> Lang {
        if self.code == "fa" {
            Lang::Fa
        } else {
            Lang::En
        }
    }

    pub fn state(&self, state: UserState) -> &'static str {
        match (self.lang(), state) {
            (Lang::Fa, UserState::Active) => "فعال",
            (Lang::Fa, UserState::Disabled) => "غیرفعال",
            (Lang::Fa, UserState::Expired) => "منقضی شده",
            (Lang::Fa, UserState::LimitReached) => "حجم تمام شده",
            (Lang::En, UserState::Active) => "Active",
            (Lang::En, UserState::Disabled) => "Disabled",
            (Lang::En, UserState::Expired) => "Expired",
            (Lang::En, UserState::LimitReached) => "Limit reached",
        }
    }

    /// One sentence under the state that says what it means for the user.
    pub fn state_note(&self, state: UserState) -> &'static str {
        match (self.lang(), state) {
            (Lang::Fa, UserState::Active) => "اشتراک شما فعال است.",
            (Lang::Fa, UserState::Disabled) => {
                "این اشتراک غیرفعال شده است. برای فعال‌سازی با فروشنده‌ی خود تماس بگیرید."
            }
            (Lang::Fa, UserState::Expired) => {
                "مهلت این اشتراک تمام شده است. برای تمدید با فروشنده‌ی خود تماس بگیرید."
            }
            (Lang::Fa, UserState::LimitReached) => {
                "حجم این اشتراک تمام شده است. برای خرید حجم بیشتر با فروشنده‌ی خود تماس بگیرید."
            }
            (Lang::En, UserState::Active) => "Your subscription is active.",
            (Lang::En, UserState::Disabled) => {
                "This subscription is disabled. Contact your provider to enable it."
            }
            (Lang::En, UserState::Expired) => {
                "This subscription has expired. Contact your provider to renew it."
            }
            (Lang::En, UserState::LimitReached) => {
                "This subscription has used all its traffic. Contact your provider for more."
            }
        }
    }

    /// `amount` left of the plan.
    pub fn remaining(&self, amount: &str) -> String {
        match self.lang() {
            Lang::Fa => format!("{amount} باقی‌مانده"),
            Lang::En => format!("{amount} left"),
        }
    }

    /// Whole days until the expiry (positive) or since it (zero or
    /// negative), as words.
    pub fn days_left(&self, days: i64) -> String {
        let count = self.number(&days.unsigned_abs().to_string());
        match (self.lang(), days) {
            (Lang::Fa, 1..) => format!("{count} روز مانده"),
            (Lang::Fa, 0) => "امروز منقضی شد".to_owned(),
            (Lang::Fa, _) => format!("{count} روز پیش منقضی شد"),
            (Lang::En, 1) => "1 day left".to_owned(),
            (Lang::En, 2..) => format!("{count} days left"),
            (Lang::En, 0) => "Expired today".to_owned(),
            (Lang::En, -1) => "Expired 1 day ago".to_owned(),
            (Lang::En, _) => format!("Expired {count} days ago"),
        }
    }

    /// A date as `day month year`, with this language's month names.
    pub fn date(&self, date: Date, jalali: bool) -> String {
        let months = if jalali {
            &self.jalali_months
        } else {
            &self.gregorian_months
        };
        let month = months
            .get(usize::from(date.month).saturating_sub(1))
            .copied()
            .unwrap_or("?");
        let day = self.number(&date.day.to_string());
        let year = self.number(&date.year.to_string());
        format!("{day} {month} {year}")
    }

    /// A byte count in binary units (1 GB = 1024³ bytes, as the panels
    /// count), with at most two decimals.
    pub fn bytes(&self, bytes: u64) -> String {
        let mut unit = 0;
        let mut scale = 1u64;
        while unit + 1 < self.units.len() && bytes >= scale * 1024 {
            scale *= 1024;
            unit += 1;
        }
        let figure = if unit == 0 {
            bytes.to_string()
        } else {
            decimal(bytes as f64 / scale as f64, 2)
        };
        format!("{} {}", self.number(&figure), self.units[unit])
    }

    /// `used` as a percentage of `limit`, with at most one decimal.
    pub fn percent(&self, used: u64, limit: u64) -> String {
        let percent = used as f64 * 100.0 / limit.max(1) as f64;
        let figure = self.number(&decimal(percent, 1));
        match self.lang() {
            Lang::Fa => format!("{figure}٪"),
            Lang::En => format!("{figure}%"),
        }
    }

    /// Latin digits as this language writes them: Persian digits and the
    /// Persian decimal separator for Persian.
    pub fn number(&self, latin: &str) -> String {
        match self.lang() {
            Lang::En => latin.to_owned(),
            Lang::Fa => latin
                .chars()
                .map(|ch| match ch {
                    '0'..='9' => char::from_u32(0x06F0 + (ch as u32 - '0' as u32)).unwrap_or(ch),
                    '.' => '٫',
                    other => other,
                })
                .collect(),
        }
    }
}

/// `value` rounded to `places` decimals, without trailing zeros.
fn decimal(value: f64, places: usize) -> String {
    let fixed = format!("{value:.places$}");
    if fixed.contains('.') {
        fixed.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        fixed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn bytes_use_binary_units_and_trim_decimals() {
        let en = Text::of(Lang::En);
        assert_eq!(en.bytes(0), "0 B");
        assert_eq!(en.bytes(1023), "1023 B");
        assert_eq!(en.bytes(1024), "1 KB");
        assert_eq!(en.bytes(1536), "1.5 KB");
        assert_eq!(en.bytes(GIB * 3 / 2), "1.5 GB");
        assert_eq!(en.bytes(10 * GIB), "10 GB");
        assert_eq!(en.bytes(GIB + GIB / 3), "1.33 GB");
        assert_eq!(en.bytes(5 * 1024 * GIB), "5 TB");
        assert_eq!(en.bytes(u64::MAX), "16777216 TB");
    }

    #[test]
    fn persian_numbers_use_persian_digits() {
        let fa = Text::of(Lang::Fa);
        assert_eq!(fa.bytes(GIB * 3 / 2), "۱٫۵ گیگابایت");
        assert_eq!(fa.number("2026"), "۲۰۲۶");
        assert_eq!(fa.percent(15, 100), "۱۵٪");
    }

    #[test]
    fn percent_has_one_decimal_at_most() {
        let en = Text::of(Lang::En);
        assert_eq!(en.percent(1, 3), "33.3%");
        assert_eq!(en.percent(GIB * 3 / 2, 10 * GIB), "15%");
        assert_eq!(en.percent(0, 10), "0%");
        assert_eq!(en.percent(30, 20), "150%");
    }

    #[test]
    fn days_left_in_words() {
        let en = Text::of(Lang::En);
        assert_eq!(en.days_left(12), "12 days left");
        assert_eq!(en.days_left(1), "1 day left");
        assert_eq!(en.days_left(0), "Expired today");
        assert_eq!(en.days_left(-1), "Expired 1 day ago");
        assert_eq!(en.days_left(-3), "Expired 3 days ago");
        let fa = Text::of(Lang::Fa);
        assert_eq!(fa.days_left(12), "۱۲ روز مانده");
        assert_eq!(fa.days_left(-3), "۳ روز پیش منقضی شد");
    }

    #[test]
    fn dates_with_month_names() {
        let date = Date {
            year: 1405,
            month: 9,
            day: 12,
        };
        assert_eq!(Text::of(Lang::Fa).date(date, true), "۱۲ آذر ۱۴۰۵");
        assert_eq!(Text::of(Lang::En).date(date, true), "12 Azar 1405");
        let date = Date {
            year: 2026,
            month: 12,
            day: 3,
        };
        assert_eq!(Text::of(Lang::En).date(date, false), "3 December 2026");
        assert_eq!(Text::of(Lang::Fa).date(date, false), "۳ دسامبر ۲۰۲۶");
    }
}
