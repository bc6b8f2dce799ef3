//! The status page a browser gets at a subscription URL: one self-contained HTML document, Persian or English.
//!
//! The page loads nothing from another host (its users sit behind filters
//! that block CDNs): the style and the copy script are inline, fonts are the
//! system's, and the QR code is inline SVG. A Content-Security-Policy meta
//! tag makes the browser hold the page to that. Every value from the
//! database or the request is HTML-escaped.
//!
//! Rendering is a pure function of [`PageInput`]; the endpoint flow decides
//! the state, the language and the URL.

mod calendar;
mod html;
mod qr;
mod text;

use std::fmt::Write as _;

pub use calendar::{
    Date, gregorian_from_unix_day, is_jalali_leap_year, jalali_from_unix_day, unix_day,
};
pub use html::escape;

use text::Text;

/// The language of a page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lang {
    /// Persian, right to left: the default, as most users are in Iran.
    #[default]
    Fa,
    /// English, for browsers that prefer it.
    En,
}

/// What the user's subscription is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserState {
    Active,
    Disabled,
    Expired,
    LimitReached,
}

impl UserState {
    /// A stable name for CSS classes, `data-state` and tests.
    pub fn slug(self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::Disabled => "disabled",
            UserState::Expired => "expired",
            UserState::LimitReached => "limit-reached",
        }
    }
}

/// Everything the status page shows.
#[derive(Clone, Copy, Debug)]
pub struct PageInput<'a> {
    pub username: &'a str,
    pub state: UserState,
    /// Bytes used.
    pub used: u64,
    /// Plan limit in bytes; 0 means unlimited.
    pub limit: u64,
    /// Expiry as Unix seconds (UTC); `None` means no expiry.
    pub expire_at: Option<i64>,
    /// The current time as Unix seconds, for the days left.
    pub now: i64,
    /// The URL the user adds to a VPN client (shown, copied, QR-coded).
    pub subscription_url: &'a str,
    pub lang: Lang,
}

const SECONDS_PER_DAY: i64 = 86_400;

/// The language a browser asks for: English when the language it prefers
/// most (highest `q`, the first of equals) is English (`en`, `en-US`...),
/// Persian otherwise, including when the header is missing or unreadable.
pub fn preferred_lang(accept_language: Option<&str>) -> Lang {
    let Some(header) = accept_language else {
        return Lang::Fa;
    };

    let mut best: Option<(&str, f32)> = None;
    for item in header.split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim();
        if tag.is_empty() {
            continue;
        }
        let quality = parts
            .filter_map(|param| {
                let (name, value) = param.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| value.trim().parse::<f32>().ok())
                    .flatten()
            })
            .next()
            .unwrap_or(1.0);
        if quality.is_nan() || quality <= 0.0 {
            continue;
        }
        if best.is_none_or(|(_, best_quality)| quality > best_quality) {
            best = Some((tag, quality));
        }
    }

    match best {
        Some((tag, _)) if is_english(tag) => Lang::En,
        _ => Lang::Fa,
    }
}

fn is_english(tag: &str) -> bool {
    let primary = tag.split(['-', '_']).next().unwrap_or("");
    primary.eq_ignore_ascii_case("en")
}

/// Whole days until `expire_at` when it is ahead (rounded up: anything left
/// of a day counts as a day), or minus the whole days since it when it has
/// passed (0 on the day itself).
pub fn days_left(expire_at: i64, now: i64) -> i64 {
    let seconds = expire_at.saturating_sub(now);
    if seconds > 0 {
        seconds.div_euclid(SECONDS_PER_DAY) + i64::from(seconds.rem_euclid(SECONDS_PER_DAY) > 0)
    } else {
        let days_ago = seconds.unsigned_abs() / SECONDS_PER_DAY.unsigned_abs();
        -i64::try_from(days_ago).unwrap_or(i64::MAX)
    }
}

/// The status page of one user.
pub fn render_status(input: &PageInput<'_>) -> String {
    let text = Text::of(input.lang);
    let username = escape(input.username);
    let slug = input.state.slug();
    let mut body = String::with_capacity(8 * 1024);

    // Who and in what state.
    let _ = write!(
        body,
        "<div id=\"status\" class=\"state-{slug}\" data-state=\"{slug}\">\n\
         <section class=\"card\">\n<div class=\"head\">\n\
         <h1 class=\"user\"><bdi id=\"username\">{username}</bdi></h1>\n\
         <span class=\"badge\" id=\"state\">{state}</span>\n</div>\n\
         <p class=\"note\">{note}</p>\n</section>\n",
        state = text.state(input.state),
        note = text.state_note(input.state),
    );

    // Traffic against the plan.
    let used = text.bytes(input.used);
    let _ = write!(
        body,
        "<section class=\"card usage\">\n<h2>{usage}</h2>\n",
        usage = text.usage
    );
    if input.limit > 0 {
        let fill = (input.used as f64 * 100.0 / input.limit as f64).clamp(0.0, 100.0);
        let remaining = text.bytes(input.limit.saturating_sub(input.used));
        let _ = write!(
            body,
            "<p class=\"figures\"><span id=\"used\">{used}</span> \
             <span class=\"limit\">{of} <span id=\"limit\">{limit}</span></span></p>\n\
             <div class=\"bar\" role=\"progressbar\" aria-valuemin=\"0\" aria-valuemax=\"100\" \
             aria-valuenow=\"{now:.0}\"><span style=\"width:{fill:.1}%\"></span></div>\n\
             <p class=\"sub\"><span id=\"percent\">{percent}</span>\
             <span id=\"remaining\">{remaining}</span></p>\n",
            of = text.of,
            limit = text.bytes(input.limit),
            now = fill,
            percent = text.percent(input.used, input.limit),
            remaining = text.remaining(&remaining),
        );
    } else {
        let _ = write!(
            body,
            "<p class=\"figures\"><span id=\"used\">{used}</span></p>\n\
             <p class=\"sub\"><span id=\"limit\">{unlimited}</span></p>\n",
            unlimited = text.unlimited,
        );
    }
    body.push_str("</section>\n");

    // Expiry in both calendars, and the days left.
    let _ = write!(
        body,
        "<section class=\"card\">\n<h2>{expiry}</h2>\n",
        expiry = text.expiry
    );
    match input.expire_at {
        Some(expire_at) => {
            let day = unix_day(expire_at);
            let _ = write!(
                body,
                "<dl class=\"dates\"><dt>{solar}</dt><dd id=\"expiry-jalali\">{jalali}</dd>\
                 <dt>{gregorian}</dt><dd id=\"expiry-gregorian\">{gregorian_date}</dd></dl>\n\
                 <p class=\"left\" id=\"days-left\">{left}</p>\n",
                solar = text.solar_hijri,
                jalali = text.date(jalali_from_unix_day(day), true),
                gregorian = text.gregorian,
                gregorian_date = text.date(gregorian_from_unix_day(day), false),
                left = text.days_left(days_left(expire_at, input.now)),
            );
        }
        None => {
            let _ = writeln!(
                body,
                "<p class=\"left\" id=\"days-left\">{none}</p>",
                none = text.no_expiry
            );
        }
    }
    body.push_str("</section>\n");

    // The link: shown, copied, and as a QR code for phones. The copy button
    // starts hidden and the script shows it, so a browser without scripts
    // shows no button that does nothing.
    let url = escape(input.subscription_url);
    let _ = write!(
        body,
        "<section class=\"card\">\n<h2>{link}</h2>\n<p class=\"hint\">{hint}</p>\n\
         <code class=\"url\" id=\"sub-url\" dir=\"ltr\">{url}</code>\n\
         <button id=\"copy\" type=\"button\" data-done=\"{copied}\" hidden>{copy}</button>\n",
        link = text.link,
        hint = text.link_hint,
        copied = text.copied,
        copy = text.copy,
    );
    if let Some(svg) = qr::svg(input.subscription_url, text.qr_label) {
        let _ = writeln!(
            body,
            "<figure id=\"qr\">{svg}<figcaption>{caption}</figcaption></figure>",
            caption = text.qr_caption
        );
    }
    body.push_str("</section>\n</div>\n");

    let title = format!("{} · {username}", text.title);
    html::document(text, &title, &body, true)
}

/// The page for a subscription URL that matches no user (or a wrong key):
/// the same look, a friendly word, and nothing about why.
pub fn render_not_found(lang: Lang) -> String {
    let text = Text::of(lang);
    let body = format!(
        "<section class=\"card missing\" id=\"not-found\">\n<div class=\"mark\">?</div>\n\
         <h1>{title}</h1>\n<p class=\"note\">{note}</p>\n</section>\n",
        title = text.not_found_title,
        note = text.not_found_text,
    );
    html::document(text, text.not_found_title, &body, false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    /// 2026-12-03 12:00:00 UTC.
    const NOW: i64 = 1_796_299_200;

    fn input(state: UserState, lang: Lang) -> PageInput<'static> {
        PageInput {
            username: "ali",
            state,
            used: GIB * 3 / 2,
            limit: 10 * GIB,
            expire_at: Some(NOW + 12 * SECONDS_PER_DAY - 3600),
            now: NOW,
            subscription_url: "https://sub.example.com/sub/ali/k3y/links",
            lang,
        }
    }

    /// The text content of the element with `id`, markup stripped.
    fn text_of(page: &str, id: &str) -> String {
        let marker = format!("id=\"{id}\"");
        let start = page.find(&marker).unwrap_or_else(|| panic!("no #{id}"));
        let open_end = start + page[start..].find('>').unwrap() + 1;
        let tag_start = page[..start].rfind('<').unwrap();
        let tag = page[tag_start + 1..].split([' ', '>']).next().unwrap();
        let close = format!("</{tag}>");
        let end = open_end + page[open_end..].find(&close).unwrap();
        let mut out = String::new();
        let mut in_tag = false;
        for ch in page[open_end..end].chars() {
            match ch {
                '<' => in_tag = true,
                '>' => in_tag = false,
                other if !in_tag => out.push(other),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn preferred_lang_picks_english_only_when_it_is_preferred() {
        assert_eq!(preferred_lang(None), Lang::Fa);
        assert_eq!(preferred_lang(Some("")), Lang::Fa);
        assert_eq!(preferred_lang(Some("en-US,en;q=0.9,fa;q=0.8")), Lang::En);
        assert_eq!(preferred_lang(Some("EN")), Lang::En);
        assert_eq!(
            preferred_lang(Some("fa-IR,fa;q=0.9,en-US;q=0.8,en;q=0.7")),
            Lang::Fa
        );
        assert_eq!(preferred_lang(Some("fa;q=0.5, en-GB;q=0.8")), Lang::En);
        assert_eq!(preferred_lang(Some("de-DE,en;q=0.9")), Lang::Fa);
        assert_eq!(preferred_lang(Some("en;q=0, fa")), Lang::Fa);
        assert_eq!(
            preferred_lang(Some("en;q=0.8, en-US;q=0.8, fa;q=0.8")),
            Lang::En
        );
        assert_eq!(preferred_lang(Some("eng,fa;q=0.1")), Lang::Fa);
        assert_eq!(preferred_lang(Some("*")), Lang::Fa);
        assert_eq!(preferred_lang(Some("en;q=abc")), Lang::En);
    }

    #[test]
    fn days_left_rounds_partial_days_up() {
        assert_eq!(days_left(NOW + 1, NOW), 1);
        assert_eq!(days_left(NOW + SECONDS_PER_DAY, NOW), 1);
        assert_eq!(days_left(NOW + SECONDS_PER_DAY + 1, NOW), 2);
        assert_eq!(days_left(NOW, NOW), 0);
        assert_eq!(days_left(NOW - 10, NOW), 0);
        assert_eq!(days_left(NOW - 3 * SECONDS_PER_DAY - 5, NOW), -3);
        assert_eq!(days_left(i64::MIN, i64::MAX), -(i64::MAX / SECONDS_PER_DAY));
    }

    #[test]
    fn the_english_page_shows_the_figures() {
        let page = render_status(&input(UserState::Active, Lang::En));
        assert!(page.starts_with("<!doctype html>\n<html lang=\"en\" dir=\"ltr\">"));
        assert_eq!(text_of(&page, "username"), "ali");
        assert_eq!(text_of(&page, "state"), "Active");
        assert_eq!(text_of(&page, "used"), "1.5 GB");
        assert_eq!(text_of(&page, "limit"), "10 GB");
        assert_eq!(text_of(&page, "percent"), "15%");
        assert_eq!(text_of(&page, "remaining"), "8.5 GB left");
        assert_eq!(text_of(&page, "expiry-gregorian"), "15 December 2026");
        assert_eq!(text_of(&page, "expiry-jalali"), "24 Azar 1405");
        assert_eq!(text_of(&page, "days-left"), "12 days left");
        assert_eq!(
            text_of(&page, "sub-url"),
            "https://sub.example.com/sub/ali/k3y/links"
        );
        assert!(page.contains("style=\"width:15.0%\""));
        assert!(page.contains("<svg class=\"qr\""));
    }

    #[test]
    fn the_persian_page_is_right_to_left_with_persian_digits() {
        let page = render_status(&input(UserState::LimitReached, Lang::Fa));
        assert!(page.starts_with("<!doctype html>\n<html lang=\"fa\" dir=\"rtl\">"));
        assert_eq!(text_of(&page, "state"), "حجم تمام شده");
        assert_eq!(text_of(&page, "used"), "۱٫۵ گیگابایت");
        assert_eq!(text_of(&page, "expiry-jalali"), "۲۴ آذر ۱۴۰۵");
        assert_eq!(text_of(&page, "days-left"), "۱۲ روز مانده");
        assert!(page.contains("data-state=\"limit-reached\""));
    }

    #[test]
    fn each_state_has_its_label() {
        for (state, label) in [
            (UserState::Active, "Active"),
            (UserState::Disabled, "Disabled"),
            (UserState::Expired, "Expired"),
            (UserState::LimitReached, "Limit reached"),
        ] {
            let page = render_status(&input(state, Lang::En));
            assert_eq!(text_of(&page, "state"), label);
            assert!(page.contains(&format!("data-state=\"{}\"", state.slug())));
        }
    }

    #[test]
    fn unlimited_and_no_expiry_are_said_plainly() {
        let mut open = input(UserState::Active, Lang::En);
        open.limit = 0;
        open.expire_at = None;
        let page = render_status(&open);
        assert_eq!(text_of(&page, "limit"), "Unlimited");
        assert_eq!(text_of(&page, "days-left"), "No expiry");
        assert!(!page.contains("role=\"progressbar\""));
        assert!(!page.contains("id=\"expiry-jalali\""));
    }

    #[test]
    fn usage_over_the_limit_fills_the_bar_and_leaves_nothing() {
        let mut over = input(UserState::LimitReached, Lang::En);
        over.used = 12 * GIB;
        let page = render_status(&over);
        assert_eq!(text_of(&page, "percent"), "120%");
        assert_eq!(text_of(&page, "remaining"), "0 B left");
        assert!(page.contains("style=\"width:100.0%\""));
    }

    #[test]
    fn an_expired_subscription_says_since_when() {
        let mut expired = input(UserState::Expired, Lang::En);
        expired.expire_at = Some(NOW - 3 * SECONDS_PER_DAY - 60);
        let page = render_status(&expired);
        assert_eq!(text_of(&page, "days-left"), "Expired 3 days ago");
    }

    #[test]
    fn every_value_is_escaped() {
        let mut hostile = input(UserState::Active, Lang::En);
        hostile.username = "<script>alert('x')</script>";
        hostile.subscription_url = "https://h/sub/\"><img src=x onerror=alert(1)>/k/links";
        let page = render_status(&hostile);
        assert!(!page.contains("<script>alert"));
        assert!(!page.contains("<img"));
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert_eq!(page.matches("<script>").count(), 1, "only the copy script");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let page = render_status(&input(UserState::Active, Lang::Fa));
        for attribute in [
            "src=", "href=", "url(", "@import", "<link", "<img", "<iframe",
        ] {
            assert!(!page.contains(attribute), "{attribute}");
        }
        assert!(page.contains("default-src 'none'"));
        // The subscription URL appears only as text.
        let url = "https://sub.example.com/sub/ali/k3y/links";
        assert_eq!(page.matches("https://").count(), 1);
        assert!(page.contains(&format!(">{url}</code>")));
    }

    #[test]
    fn the_not_found_page_exists_in_both_languages() {
        let persian = render_not_found(Lang::Fa);
        assert!(persian.contains("lang=\"fa\" dir=\"rtl\""));
        assert_eq!(
            text_of(&persian, "not-found").trim().lines().nth(1),
            Some("اشتراک پیدا نشد")
        );
        let english = render_not_found(Lang::En);
        assert!(english.contains("lang=\"en\" dir=\"ltr\""));
        assert!(english.contains("<h1>Subscription not found</h1>"));
        assert!(!english.contains("<script>"));
    }
}
