//! The status page in a real browser: every state rendered to a file, loaded in headless Chromium, its DOM checked and a screenshot taken.
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`; `.ci/run` installs
//! it). Screenshots go to `CARGO_TARGET_TMPDIR/page-screenshots/`; with
//! `VALHALLA_UPDATE_SCREENSHOTS=1` they are also copied to `docs/img/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use valhalla::page::{Lang, PageInput, UserState, render_not_found, render_status};

const GIB: u64 = 1 << 30;
const DAY: i64 = 86_400;
/// 2026-12-03 12:00:00 UTC, so dates on the page are known.
const NOW: i64 = 1_796_299_200;
const URL: &str = "https://sub.example.com:2096/sub/ali/0f3c9a7d21b84e6f/links";
const WINDOW: (u32, u32) = (420, 900);
/// Where Debian puts Chromium; `VALHALLA_CHROMIUM` names another binary (the
/// Nix shell and checks set it to the store path).
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

/// A script put first in a page under test: it records every request the
/// Content-Security-Policy blocks and, once the page has loaded, how many
/// resources it fetched, as attributes that `--dump-dom` shows.
const PROBE: &str = "<script>(function(){var d=document.documentElement,n=0;\
d.setAttribute('data-violations','0');\
document.addEventListener('securitypolicyviolation',function(e){n++;\
d.setAttribute('data-violations',String(n));d.setAttribute('data-blocked',e.blockedURI);});\
addEventListener('load',function(){\
d.setAttribute('data-resources',String(performance.getEntriesByType('resource').length));});\
})();</script>";

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "valhalla-page-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chromium() -> String {
    let chromium =
        std::env::var("VALHALLA_CHROMIUM").unwrap_or_else(|_| DEFAULT_CHROMIUM.to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: these tests need headless Chromium; \
         install the Debian package `chromium` (apt-get install -y chromium) \
         or point VALHALLA_CHROMIUM at a Chromium binary"
    );
    chromium
}

/// Runs Chromium on `page` with `action` (`--dump-dom` or `--screenshot=...`)
/// and returns its standard output. Every host name resolves to nothing, so
/// even a page that tried could reach no other host.
fn run_chromium(page: &Path, action: &str) -> String {
    let profile = TempDir::new("profile");
    let (width, height) = WINDOW;
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(action)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");

    // Read the pipes on threads so a full pipe cannot stall Chromium.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).map(|_| text)
    });

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > CHROMIUM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium took longer than {CHROMIUM_TIMEOUT:?} on {}",
                page.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap().unwrap();
    let stderr = err.join().unwrap().unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}) on {}: {stderr}",
        page.display()
    );
    stdout
}

/// The page as Chromium's DOM after scripts ran, with the probe in it.
fn dump_dom(dir: &Path, name: &str, html: &str) -> String {
    let probed = html.replacen("<head>", &format!("<head>\n{PROBE}"), 1);
    assert_ne!(probed, html, "the page has a <head>");
    let path = dir.join(format!("{name}.html"));
    std::fs::write(&path, probed).unwrap();
    run_chromium(&path, "--dump-dom")
}

/// A screenshot of the page (without the probe), checked to be a PNG of
/// the window's size, kept in the target directory and, when asked, in
/// `docs/img/`.
fn screenshot(dir: &Path, name: &str, html: &str) -> PathBuf {
    let page = dir.join(format!("{name}.html"));
    std::fs::write(&page, html).unwrap();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&png);
    run_chromium(&page, &format!("--screenshot={}", png.display()));

    let bytes = std::fs::read(&png).unwrap_or_else(|error| panic!("no screenshot {name}: {error}"));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name} is a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), WINDOW, "{name} has the window's size");
    // A blank or failed render compresses to almost nothing.
    assert!(
        bytes.len() > 8_000,
        "{name} looks empty ({} bytes)",
        bytes.len()
    );

    if std::env::var("VALHALLA_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(&png, docs.join(format!("{name}.png"))).unwrap();
    }
    png
}

/// The text of the element with `id`, markup stripped and entities of the
/// five escaped characters decoded.
fn text_of(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let tag_start = dom[..start].rfind('<').unwrap();
    let tag = dom[tag_start + 1..].split([' ', '>']).next().unwrap();
    let open_end = start + dom[start..].find('>').unwrap() + 1;
    let end = open_end + dom[open_end..].find(&format!("</{tag}>")).unwrap();
    let mut text = String::new();
    let mut in_tag = false;
    for ch in dom[open_end..end].chars() {
        match ch {
            '<' => in_tag = true,
            '>' => in_tag = false,
            other if !in_tag => text.push(other),
            _ => {}
        }
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The opening tag of the element with `id`.
fn tag_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let tag_start = dom[..start].rfind('<').unwrap();
    let end = start + dom[start..].find('>').unwrap();
    &dom[tag_start..=end]
}

/// Asserts the probe saw the page load and request nothing.
fn assert_loaded_nothing(dom: &str, name: &str) {
    let root = &dom[dom.find("<html").unwrap()..];
    let root = &root[..root.find('>').unwrap()];
    assert!(
        root.contains("data-violations=\"0\""),
        "{name} tried to load something: {root}"
    );
    assert!(
        root.contains("data-resources=\"0\""),
        "{name} loaded a resource or never loaded: {root}"
    );
}

/// Asserts the HTML names no URL it could load: the only URL in it is the
/// subscription URL, shown as text.
fn assert_no_external_reference(html: &str, name: &str) {
    let without_url = html.replace(URL, "");
    for needle in [
        "://", "src=", "href=", "url(", "@import", "=\"//", "='//", "srcset", "action=",
    ] {
        assert!(!without_url.contains(needle), "{name} contains {needle:?}");
    }
}

fn input(state: UserState, lang: Lang) -> PageInput<'static> {
    PageInput {
        username: "علی_ali",
        state,
        used: GIB * 3 / 2,
        limit: 10 * GIB,
        expire_at: Some(NOW + 12 * DAY - 3600),
        now: NOW,
        subscription_url: URL,
        lang,
    }
}

#[test]
fn status_page_in_chromium_shows_each_state_in_persian() {
    let dir = TempDir::new("states");
    let states = [
        (UserState::Active, "فعال"),
        (UserState::Disabled, "غیرفعال"),
        (UserState::Expired, "منقضی شده"),
        (UserState::LimitReached, "حجم تمام شده"),
    ];
    for (state, label) in states {
        let mut page_input = input(state, Lang::Fa);
        if state == UserState::Expired {
            page_input.expire_at = Some(NOW - 3 * DAY - 60);
        }
        if state == UserState::LimitReached {
            page_input.used = 10 * GIB;
        }
        let html = render_status(&page_input);
        let name = format!("status-{}-fa", state.slug());
        assert_no_external_reference(&html, &name);

        let dom = dump_dom(&dir.0, &name, &html);
        assert_loaded_nothing(&dom, &name);
        assert!(dom.contains("<html lang=\"fa\" dir=\"rtl\""), "{name}");
        assert!(tag_of(&dom, "status").contains(&format!("data-state=\"{}\"", state.slug())));
        assert_eq!(text_of(&dom, "state"), label, "{name}");
        assert_eq!(text_of(&dom, "username"), "علی_ali");
        assert_eq!(text_of(&dom, "limit"), "۱۰ گیگابایت");
        assert_eq!(text_of(&dom, "sub-url"), URL);
        assert!(dom.contains("<svg class=\"qr\""), "{name} has its QR code");
        // The inline script ran under the page's policy and showed the button.
        assert!(
            !tag_of(&dom, "copy").contains("hidden"),
            "{name}: {}",
            tag_of(&dom, "copy")
        );

        match state {
            UserState::Expired => {
                assert_eq!(text_of(&dom, "days-left"), "۳ روز پیش منقضی شد");
                assert_eq!(text_of(&dom, "expiry-jalali"), "۹ آذر ۱۴۰۵");
                assert_eq!(text_of(&dom, "expiry-gregorian"), "۳۰ نوامبر ۲۰۲۶");
            }
            UserState::LimitReached => {
                assert_eq!(text_of(&dom, "used"), "۱۰ گیگابایت");
                assert_eq!(text_of(&dom, "percent"), "۱۰۰٪");
                assert_eq!(text_of(&dom, "remaining"), "۰ بایت باقی‌مانده");
            }
            UserState::Active | UserState::Disabled => {
                assert_eq!(text_of(&dom, "used"), "۱٫۵ گیگابایت");
                assert_eq!(text_of(&dom, "percent"), "۱۵٪");
                assert_eq!(text_of(&dom, "remaining"), "۸٫۵ گیگابایت باقی‌مانده");
                assert_eq!(text_of(&dom, "days-left"), "۱۲ روز مانده");
                assert_eq!(text_of(&dom, "expiry-jalali"), "۲۴ آذر ۱۴۰۵");
            }
        }

        screenshot(&dir.0, &name, &html);
    }
}

#[test]
fn status_page_in_chromium_in_english() {
    let dir = TempDir::new("english");
    let html = render_status(&input(UserState::Active, Lang::En));
    let name = "status-active-en";
    assert_no_external_reference(&html, name);

    let dom = dump_dom(&dir.0, name, &html);
    assert_loaded_nothing(&dom, name);
    assert!(dom.contains("<html lang=\"en\" dir=\"ltr\""));
    assert_eq!(text_of(&dom, "state"), "Active");
    assert_eq!(text_of(&dom, "used"), "1.5 GB");
    assert_eq!(text_of(&dom, "limit"), "10 GB");
    assert_eq!(text_of(&dom, "percent"), "15%");
    assert_eq!(text_of(&dom, "remaining"), "8.5 GB left");
    assert_eq!(text_of(&dom, "expiry-gregorian"), "15 December 2026");
    assert_eq!(text_of(&dom, "expiry-jalali"), "24 Azar 1405");
    assert_eq!(text_of(&dom, "days-left"), "12 days left");
    assert_eq!(text_of(&dom, "sub-url"), URL);
    screenshot(&dir.0, name, &html);

    // Unlimited, no expiry, and a username that tries to be markup.
    let mut open = input(UserState::Active, Lang::En);
    open.limit = 0;
    open.expire_at = None;
    open.username = "<b id=\"x\">ali</b>";
    let html = render_status(&open);
    let dom = dump_dom(&dir.0, "status-unlimited-en", &html);
    assert_loaded_nothing(&dom, "status-unlimited-en");
    assert_eq!(text_of(&dom, "limit"), "Unlimited");
    assert_eq!(text_of(&dom, "days-left"), "No expiry");
    assert_eq!(text_of(&dom, "username"), "<b id=\"x\">ali</b>");
    assert!(!dom.contains("<b id="), "the username stayed text");
    assert!(!dom.contains("role=\"progressbar\""));
}

#[test]
fn not_found_page_in_chromium_in_both_languages() {
    let dir = TempDir::new("missing");
    for (lang, code, title) in [
        (Lang::Fa, "fa", "اشتراک پیدا نشد"),
        (Lang::En, "en", "Subscription not found"),
    ] {
        let html = render_not_found(lang);
        let name = format!("not-found-{code}");
        assert_no_external_reference(&html, &name);
        let dom = dump_dom(&dir.0, &name, &html);
        assert_loaded_nothing(&dom, &name);
        assert!(dom.contains(&format!("<html lang=\"{code}\"")));
        assert!(text_of(&dom, "not-found").contains(title), "{name}");
        screenshot(&dir.0, &name, &html);
    }
}

/// The probe itself must notice a page that loads something, or the checks
/// above prove nothing.
#[test]
fn page_probe_notices_a_page_that_loads_from_elsewhere() {
    let dir = TempDir::new("probe");
    let html = render_status(&input(UserState::Active, Lang::En));
    let leaky = html.replacen(
        "</main>",
        "<img src=\"https://cdn.example.invalid/logo.png\" alt=\"\"></main>",
        1,
    );
    assert!(
        std::panic::catch_unwind(|| assert_no_external_reference(&leaky, "leaky")).is_err(),
        "the static check must flag the image"
    );

    let dom = dump_dom(&dir.0, "leaky", &leaky);
    let root = &dom[dom.find("<html").unwrap()..];
    let root = &root[..root.find('>').unwrap()];
    assert!(
        !root.contains("data-violations=\"0\""),
        "the policy blocked the image: {root}"
    );
    assert!(
        root.contains("data-blocked=\"https://cdn.example.invalid/logo.png\""),
        "{root}"
    );
}
