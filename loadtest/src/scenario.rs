//! The goose scenarios (VPN clients, browsers, unknown users), the checks
//! their transactions make, and running one attack to a summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};
use goose::config::GooseConfiguration;
use goose::goose::GooseResponse;
use goose::metrics::GooseMetrics;
use goose::prelude::*;

use crate::seed::Identities;

/// What the scenarios address and what they must not see.
#[derive(Debug, Clone)]
pub struct Plan {
    pub identities: Identities,
    /// Config names that filters remove: an answer holding one is wrong.
    pub forbidden: Vec<String>,
}

/// The plan of the attack being run. Goose transactions are plain functions,
/// so they find their plan here; one attack runs at a time.
static PLAN: RwLock<Option<Arc<Plan>>> = RwLock::new(None);

/// Requests made so far; user `k` of the sequence is `k * stride mod N`, so
/// every request addresses another user until all N were asked once.
static NEXT: AtomicU64 = AtomicU64::new(0);

pub fn install(plan: Plan) {
    let mut slot = PLAN.write().unwrap_or_else(|e| e.into_inner());
    *slot = Some(Arc::new(plan));
    NEXT.store(0, Ordering::SeqCst);
}

fn plan() -> Result<Arc<Plan>, Box<TransactionError>> {
    PLAN.read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| {
            Box::new(TransactionError::Custom(
                "no load-test plan installed".into(),
            ))
        })
}

/// A step through 0..n that visits every index once: a prime that does not
/// divide n, so that consecutive requests land on different owners.
fn stride(n: u64) -> u64 {
    [7_919, 7_907, 7_901]
        .into_iter()
        .find(|p| !n.is_multiple_of(*p))
        .unwrap_or(1)
}

/// The index of the k-th user asked for.
pub fn user_at(k: u64, n: u64) -> u64 {
    let n = n.max(1);
    ((k % n) * stride(n)) % n
}

fn next_user(plan: &Plan) -> u64 {
    user_at(NEXT.fetch_add(1, Ordering::Relaxed), plan.identities.users)
}

/// Why an answer is wrong, or None when it is right.
pub fn check_text(
    status: u16,
    content_type: &str,
    has_quota_header: bool,
    body: &str,
    forbidden: &[String],
) -> Option<String> {
    if status != 200 {
        return Some(format!("status {status}, want 200"));
    }
    if !content_type.starts_with("text/plain") {
        return Some(format!("content type {content_type:?}, want text/plain"));
    }
    if !has_quota_header {
        return Some("no X-Plan-Limit-Bytes header".into());
    }
    let mut links = 0;
    for line in body.lines() {
        let lower = line.to_ascii_lowercase();
        if ["vless://", "vmess://", "trojan://", "ss://"]
            .iter()
            .any(|scheme| lower.starts_with(scheme))
        {
            links += 1;
            if let Some(name) = forbidden
                .iter()
                .find(|name| line.ends_with(&format!("#{name}")))
            {
                return Some(format!("filtered config {name} was served"));
            }
        } else if !line.starts_with("# ") {
            return Some("a line that is neither a link nor a failure note".into());
        }
    }
    if links == 0 {
        return Some("no config link in the answer".into());
    }
    None
}

pub fn check_page(status: u16, content_type: &str, body: &str, username: &str) -> Option<String> {
    if status != 200 {
        return Some(format!("status {status}, want 200"));
    }
    if !content_type.starts_with("text/html") {
        return Some(format!("content type {content_type:?}, want text/html"));
    }
    if !body.contains(username) {
        return Some("the page does not name the user".into());
    }
    None
}

/// The parts of an answer the checks look at.
struct Answer<'a> {
    status: u16,
    content_type: &'a str,
    has_quota_header: bool,
    body: &'a str,
}

/// Sends a GET named `name` with `headers`, and hands the answer to `judge`,
/// which says what is wrong with it. A right answer counts as a success
/// whatever its status (the 404 of an unknown user is right).
async fn get_and_check(
    user: &mut GooseUser,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
    judge: impl FnOnce(Answer<'_>) -> Option<String>,
) -> TransactionResult {
    let mut builder = user.get_request_builder(&GooseMethod::Get, path)?;
    for (header, value) in headers {
        builder = builder.header(*header, *value);
    }
    let request = GooseRequest::builder()
        .name(name)
        .set_request_builder(builder)
        .build();
    let GooseResponse {
        mut request,
        response,
    } = user.request(request).await?;
    // A transport error was recorded as a failure by goose already.
    let Ok(response) = response else {
        return Ok(());
    };
    let status = response.status().as_u16();
    let response_headers = response.headers().clone();
    let content_type = response_headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match response.text().await {
        Ok(body) => body,
        Err(_) => {
            return user.set_failure(
                "body unreadable",
                &mut request,
                Some(&response_headers),
                None,
            );
        }
    };
    let answer = Answer {
        status,
        content_type: &content_type,
        has_quota_header: response_headers.contains_key("x-plan-limit-bytes"),
        body: &body,
    };
    match judge(answer) {
        Some(reason) => {
            user.set_failure(&reason, &mut request, Some(&response_headers), Some(&body))
        }
        None => user.set_success(&mut request),
    }
}

/// A VPN client polling its subscription as text.
async fn subscription_text(user: &mut GooseUser) -> TransactionResult {
    let plan = plan()?;
    let index = next_user(&plan);
    let path = plan.identities.path(index);
    get_and_check(
        user,
        "text",
        &path,
        &[("Accept", "*/*"), ("User-Agent", "v2rayNG/1.8.19")],
        |a| {
            check_text(
                a.status,
                a.content_type,
                a.has_quota_header,
                a.body,
                &plan.forbidden,
            )
        },
    )
    .await
}

/// A browser opening the subscription URL: the status page.
async fn status_page(user: &mut GooseUser) -> TransactionResult {
    let plan = plan()?;
    let index = next_user(&plan);
    let path = plan.identities.path(index);
    let username = plan.identities.username(index);
    get_and_check(
        user,
        "page",
        &path,
        &[
            (
                "Accept",
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            ),
            (
                "User-Agent",
                "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
            ),
        ],
        |a| check_page(a.status, a.content_type, a.body, &username),
    )
    .await
}

/// A client with a wrong or stale URL: 404 after one owner lookup.
async fn unknown_user(user: &mut GooseUser) -> TransactionResult {
    let k = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = format!("/sub/nobody{k}/NoSuchKey{k}/links");
    get_and_check(user, "unknown", &path, &[("Accept", "*/*")], |a| {
        (a.status != 404).then(|| format!("status {}, want 404", a.status))
    })
    .await
}

/// The framework yardstick's request: `/healthz`, which must answer 200 "ok".
async fn healthz(user: &mut GooseUser) -> TransactionResult {
    get_and_check(user, "healthz", "/healthz", &[], |a| {
        (a.status != 200 || a.body != "ok\n").then(|| {
            format!(
                "status {} with body {:?}, want 200 \"ok\"",
                a.status, a.body
            )
        })
    })
    .await
}

/// Relative weights of the three kinds of user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    pub text: usize,
    pub page: usize,
    pub unknown: usize,
}

impl Default for Weights {
    /// Mostly VPN clients; a browser or a broken link one time in ten each.
    fn default() -> Weights {
        Weights {
            text: 8,
            page: 1,
            unknown: 1,
        }
    }
}

impl std::str::FromStr for Weights {
    type Err = anyhow::Error;

    /// `TEXT,PAGE,UNKNOWN`, e.g. `8,1,1`; a zero leaves that scenario out.
    fn from_str(text: &str) -> Result<Weights> {
        let parts: Vec<usize> = text
            .split(',')
            .map(|p| p.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("weights {text:?} must be three whole numbers"))?;
        let [text_w, page, unknown] = parts[..] else {
            bail!("weights {text:?} must be three numbers: text,page,unknown");
        };
        if text_w + page + unknown == 0 {
            bail!("weights {text:?} leave no scenario");
        }
        Ok(Weights {
            text: text_w,
            page,
            unknown,
        })
    }
}

/// Registers the scenarios with non-zero weight.
pub fn register(mut attack: GooseAttack, weights: Weights) -> Result<GooseAttack> {
    if weights.text > 0 {
        attack = attack.register_scenario(
            scenario!("vpn_client")
                .set_weight(weights.text)?
                .register_transaction(
                    transaction!(subscription_text).set_name("subscription_text"),
                ),
        );
    }
    if weights.page > 0 {
        attack = attack.register_scenario(
            scenario!("browser")
                .set_weight(weights.page)?
                .register_transaction(transaction!(status_page).set_name("status_page")),
        );
    }
    if weights.unknown > 0 {
        attack = attack.register_scenario(
            scenario!("unknown_user")
                .set_weight(weights.unknown)?
                .register_transaction(transaction!(unknown_user).set_name("unknown_user")),
        );
    }
    Ok(attack)
}

/// What one attack measured.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub requests: u64,
    pub failures: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Requests by name (text, page, unknown).
    pub by_name: Vec<(String, u64)>,
    /// The first failure reasons, for the log.
    pub errors: Vec<String>,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The time under which `share` of the counted requests finished, from
/// (bucket start in microseconds, count) pairs.
pub fn percentile_ms(buckets: &[(u64, usize)], share: f64) -> f64 {
    let total: usize = buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return 0.0;
    }
    let mut sorted = buckets.to_vec();
    sorted.sort_unstable();
    let want = ((total as f64) * share).ceil().max(1.0) as usize;
    let mut seen = 0;
    for (us, count) in sorted {
        seen += count;
        if seen >= want {
            return us as f64 / 1000.0;
        }
    }
    0.0
}

/// Reads a summary from goose's metrics. Throughput counts `raw_data.counter`
/// (goose's success counts can include synthetic requests).
pub fn summarize(metrics: &GooseMetrics) -> Summary {
    let mut summary = Summary {
        seconds: metrics.duration as f64,
        ..Summary::default()
    };
    let mut buckets: Vec<(u64, usize)> = Vec::new();
    let mut names: Vec<(String, u64)> = Vec::new();
    for aggregate in metrics.requests.values() {
        let counted = aggregate.raw_data.counter as u64;
        summary.requests += counted;
        summary.failures += aggregate.fail_count as u64;
        buckets.extend(aggregate.raw_data.times_us.iter().map(|(us, n)| (*us, *n)));
        let name = aggregate
            .path
            .rsplit(' ')
            .next()
            .unwrap_or(&aggregate.path)
            .to_owned();
        names.push((name, counted));
    }
    names.sort();
    summary.by_name = names;
    summary.p50_ms = percentile_ms(&buckets, 0.50);
    summary.p95_ms = percentile_ms(&buckets, 0.95);
    summary.p99_ms = percentile_ms(&buckets, 0.99);
    summary.errors = metrics
        .errors
        .values()
        .take(5)
        .map(|e| format!("{} x{}: {}", e.name, e.occurrences, e.error))
        .collect();
    summary
}

/// Settings of one attack driven from code.
#[derive(Debug, Clone)]
pub struct Attack {
    pub host: String,
    pub users: usize,
    pub seconds: usize,
    pub weights: Weights,
}

/// Runs one attack quietly and summarizes it.
pub async fn run_quiet(plan: Plan, attack: &Attack) -> Result<Summary> {
    install(plan);
    let goose = register(
        quiet_attack(&attack.host, attack.users, attack.seconds)?,
        attack.weights,
    )?;
    execute(goose).await
}

/// A quiet attack of `users` users hammering `/healthz` of `host` for
/// `seconds`: the goose half of the framework yardstick.
pub async fn run_healthz(host: &str, users: usize, seconds: usize) -> Result<Summary> {
    let goose = quiet_attack(host, users, seconds)?.register_scenario(
        scenario!("yardstick").register_transaction(transaction!(healthz).set_name("healthz")),
    );
    execute(goose).await
}

/// An attack driven from code: every user starts at once, nothing printed,
/// no telnet controller.
fn quiet_attack(host: &str, users: usize, seconds: usize) -> Result<GooseAttack> {
    let increase_rate = users.to_string();
    let goose = GooseAttack::initialize_with_config(GooseConfiguration::default())?
        .set_default(GooseDefault::Host, host)?
        .set_default(GooseDefault::Users, users)?
        // Metrics are reset when all users have started.
        .set_default(GooseDefault::IncreaseRate, increase_rate.as_str())?
        .set_default(GooseDefault::RunTime, seconds)?
        .set_default(GooseDefault::NoTelnet, true)?
        .set_default(GooseDefault::NoPrintMetrics, true)?
        .set_default(GooseDefault::NoErrorSummary, true)?
        .set_default(GooseDefault::Quiet, 1)?
        .set_default(GooseDefault::Timeout, "30")?;
    Ok(*goose)
}

async fn execute(goose: GooseAttack) -> Result<Summary> {
    let metrics = goose
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("running the goose attack: {e:?}"))?;
    Ok(summarize(&metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_sequence_visits_every_user_once_before_repeating() {
        for n in [1u64, 7, 1_000, 7_919 * 2, 100_000] {
            let mut seen = std::collections::HashSet::new();
            for k in 0..n {
                assert!(seen.insert(user_at(k, n)), "n={n} k={k}");
            }
            assert_eq!(user_at(n, n), user_at(0, n));
        }
    }

    #[test]
    fn percentiles_come_from_buckets() {
        let buckets = vec![(3_000, 50), (1_000, 40), (10_000, 9), (200_000, 1)];
        assert_eq!(percentile_ms(&buckets, 0.40), 1.0);
        assert_eq!(percentile_ms(&buckets, 0.50), 3.0);
        assert_eq!(percentile_ms(&buckets, 0.95), 10.0);
        assert_eq!(percentile_ms(&buckets, 0.99), 10.0);
        assert_eq!(percentile_ms(&buckets, 1.0), 200.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn text_answers_are_checked_for_links_and_filters() {
        let forbidden = vec!["p0-cfg2".to_owned()];
        let ok = "vless://a@h:1#p0-cfg1\ntrojan://b@h:2#p1-cfg1\n";
        assert_eq!(
            check_text(200, "text/plain; charset=utf-8", true, ok, &forbidden),
            None
        );
        let check = |status, ct, header, body| check_text(status, ct, header, body, &forbidden);
        assert!(check(503, "text/plain", true, ok).unwrap().contains("503"));
        assert!(
            check(200, "text/html", true, ok)
                .unwrap()
                .contains("content type")
        );
        assert!(
            check(200, "text/plain", false, ok)
                .unwrap()
                .contains("X-Plan")
        );
        assert!(
            check(200, "text/plain", true, "")
                .unwrap()
                .contains("no config")
        );
        assert!(
            check(200, "text/plain", true, "# panel failed\n")
                .unwrap()
                .contains("no config")
        );
        assert!(
            check(200, "text/plain", true, "vless://x#p0-cfg2\n")
                .unwrap()
                .contains("filtered")
        );
        assert!(
            check(200, "text/plain", true, "garbage\n")
                .unwrap()
                .contains("neither")
        );
    }

    #[test]
    fn pages_must_be_html_naming_the_user() {
        assert_eq!(
            check_page(
                200,
                "text/html; charset=utf-8",
                "<p>lt0000001</p>",
                "lt0000001"
            ),
            None
        );
        assert!(check_page(200, "text/html", "<p>else</p>", "lt0000001").is_some());
        assert!(check_page(404, "text/html", "lt0000001", "lt0000001").is_some());
    }

    #[test]
    fn weights_parse_as_three_numbers() {
        assert_eq!("8,1,1".parse::<Weights>().unwrap(), Weights::default());
        assert_eq!("1,0,0".parse::<Weights>().unwrap().page, 0);
        assert!("1,2".parse::<Weights>().is_err());
        assert!("0,0,0".parse::<Weights>().is_err());
        assert!("a,b,c".parse::<Weights>().is_err());
    }
}
