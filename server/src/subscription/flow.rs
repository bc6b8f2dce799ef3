//! The subscription endpoint, step by step: owner and user from one database
//! round trip, the agent and user gates with their exactly-once disables,
//! panel fetches in parallel through the cache, filters, merge, and the
//! answer as text with quota headers or as the status page.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::db::queries::{self, Agent, LocalUser, Lookup, PanelAccount, Queries, Subject};
use crate::db::{Db, DbError};
use crate::http::{Deadline, Response};
use crate::page::{self, Lang, PageInput, UserState};
use crate::subscription::cache::{self, Cache, CacheSettings, Failure};
use crate::subscription::headers::{self, Header, Quota};
use crate::subscription::links;
use crate::upstream::{PanelError, PanelKind, PanelRef, Panels};

/// How long a claimed disable waits before another request may retry it,
/// and the back-off of later retries: 1, 2, 4 ... minutes, at most 6 hours.
fn retry_backoff_seconds(attempt: u32) -> u32 {
    60u32
        .saturating_mul(1 << attempt.saturating_sub(1).min(9))
        .min(6 * 3600)
}

/// Seconds a disable's lease outlasts the longest its panel calls may take.
const DISABLE_LEASE_MARGIN_SECONDS: u32 = 15;

/// The knobs of the endpoint, from the configuration.
#[derive(Clone, Debug)]
pub struct FlowSettings {
    pub admin_ids: Vec<i64>,
    pub fetch_max_workers: usize,
    pub public_base_url: Option<String>,
    pub profile_update_interval_hours: u32,
    /// How long the panel calls of one disable may take in all.
    pub disable_timeout: Duration,
    pub cache: CacheSettings,
}

/// One request to the endpoint, detached from the connection.
#[derive(Clone, Debug)]
pub struct SubscriptionRequest {
    pub username: String,
    pub app_key: String,
    /// The browser wants the status page.
    pub html: bool,
    /// HEAD: answer the headers without fetching any panel.
    pub head_only: bool,
    pub lang: Lang,
    /// `scheme://host` as the client reached us, for the URL on the page
    /// when `PUBLIC_BASE_URL` is not set.
    pub origin: String,
}

type LinkKey = (i64, String);
type LinkList = Arc<[String]>;
type FetchError = Arc<PanelError>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PanelCallLabels {
    panel_id: i64,
    call: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PanelLabels {
    panel_id: i64,
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DisableLabels {
    panel_id: i64,
    outcome: &'static str,
}

fn panel_latency_histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0])
}

#[derive(Clone)]
struct FlowMetrics {
    panel_calls: Family<PanelCallLabels, Counter>,
    panel_latency: Family<PanelLabels, Histogram, fn() -> Histogram>,
    disables: Family<DisableLabels, Counter>,
}

impl FlowMetrics {
    fn register(registry: &mut Registry) -> FlowMetrics {
        let metrics = FlowMetrics {
            panel_calls: Family::default(),
            panel_latency: Family::new_with_constructor(panel_latency_histogram),
            disables: Family::default(),
        };
        registry.register(
            "valhalla_panel_calls",
            "Panel calls by panel id, call and outcome",
            metrics.panel_calls.clone(),
        );
        registry.register(
            "valhalla_panel_call_duration_seconds",
            "Duration of panel calls by panel id and call",
            metrics.panel_latency.clone(),
        );
        registry.register(
            "valhalla_disables",
            "Remote account disables by panel id and outcome (pushed or failed)",
            metrics.disables.clone(),
        );
        metrics
    }

    fn panel_call(&self, panel_id: i64, call: &'static str, started: Instant, outcome: &str) {
        let outcome = match outcome {
            "ok" => "ok",
            "not_found" => "not_found",
            "timeout" => "timeout",
            _ => "error",
        };
        self.panel_calls
            .get_or_create(&PanelCallLabels {
                panel_id,
                call,
                outcome,
            })
            .inc();
        self.panel_latency
            .get_or_create(&PanelLabels { panel_id, call })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The endpoint's shared state; cheap to clone into coroutines.
#[derive(Clone)]
pub struct Subscriptions {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    panels: Panels,
    queries: Queries,
    cache: Cache<LinkKey, LinkList, FetchError>,
    settings: FlowSettings,
    metrics: FlowMetrics,
}

fn weigh(key: &LinkKey, links: &LinkList) -> usize {
    key.1.len()
        + links
            .iter()
            .map(|link| link.len() + std::mem::size_of::<String>())
            .sum::<usize>()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Why a user is not served links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Agent,
    Expired,
    LimitReached,
}

fn agent_blocks(agent: &Agent, now: i64) -> bool {
    agent.expire_at.is_some_and(|at| at <= now)
        || (agent.plan_limit_bytes > 0 && agent.total_used_bytes >= agent.plan_limit_bytes)
}

fn user_block(user: &LocalUser, now: i64) -> Option<Block> {
    if user.plan_limit_bytes > 0 && user.used_bytes >= user.plan_limit_bytes {
        Some(Block::LimitReached)
    } else if user.expire_at.is_some_and(|at| at <= now) {
        Some(Block::Expired)
    } else {
        None
    }
}

fn quota_of(user: &LocalUser) -> Quota {
    Quota {
        limit: u64::try_from(user.plan_limit_bytes).unwrap_or(0),
        used: u64::try_from(user.used_bytes).unwrap_or(0),
        expire_at: user.expire_at,
        disabled_pushed: user.disabled_pushed,
    }
}

fn panel_ref(account: &PanelAccount) -> PanelRef<'_> {
    PanelRef {
        id: account.panel_id,
        name: &account.panel_name,
        kind: PanelKind::from_panel_type(&account.panel_type),
        base_url: &account.panel_url,
        token: &account.access_token,
    }
}

/// A panel name fit for a comment line of the body: one line, printable.
fn display_name(account: &PanelAccount) -> String {
    let name: String = account
        .panel_name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let name = name.trim();
    if name.is_empty() {
        format!("panel {}", account.panel_id)
    } else {
        name.to_string()
    }
}

impl Subscriptions {
    pub fn new(db: Db, panels: Panels, settings: FlowSettings, registry: &mut Registry) -> Self {
        let cache = Cache::new(settings.cache.clone(), weigh, registry);
        let metrics = FlowMetrics::register(registry);
        let queries = Queries::new(&settings.admin_ids);
        Subscriptions {
            inner: Arc::new(Inner {
                db,
                panels,
                queries,
                cache,
                settings,
                metrics,
            }),
        }
    }

    /// Answers one subscription request by `deadline`.
    pub fn answer(&self, request: &SubscriptionRequest, deadline: Deadline) -> Response {
        let inner = &self.inner;
        let queries = inner.queries.clone();
        let (username, app_key) = (request.username.clone(), request.app_key.clone());
        let lookup = inner.db.run(deadline.instant(), move |conn| {
            queries.lookup(conn, &username, &app_key)
        });
        let lookup = match lookup {
            Ok(Some(lookup)) => lookup,
            Ok(None) => return self.not_found(request, 404),
            Err(error) => return crate::app::db_error_response(&error),
        };
        let Some(user) = lookup.user.clone() else {
            return if request.html {
                self.not_found(request, 404)
            } else {
                Response::text(200, "")
            };
        };

        let now = unix_now();
        let block = match &lookup.agent {
            Some(agent) if agent_blocks(agent, now) => Some(Block::Agent),
            _ => user_block(&user, now),
        };
        if let Some(block) = block {
            return self.blocked(request, &lookup, &user, block, deadline);
        }
        // HEAD answers only the headers and the status page shows no links:
        // neither needs the panels.
        if request.head_only || request.html {
            return self.finish(request, &user, UserState::Active, Vec::new(), String::new());
        }

        let (links, failures) = self.collect_links(&lookup.accounts, deadline);
        let body = if links.is_empty() {
            failures
                .iter()
                .map(|name| format!("# {name}: unavailable\n"))
                .collect()
        } else {
            let mut body = links.join("\n");
            body.push('\n');
            body
        };
        self.finish(
            request,
            &user,
            UserState::Active,
            quota_header_list(&quota_of(&user)),
            body,
        )
    }

    /// A user the gates stop: make sure the remote accounts get disabled,
    /// then answer with the quota headers and no links.
    fn blocked(
        &self,
        request: &SubscriptionRequest,
        lookup: &Lookup,
        user: &LocalUser,
        block: Block,
        deadline: Deadline,
    ) -> Response {
        let (subject, already_pushed) = match (&lookup.agent, block) {
            (Some(agent), Block::Agent) => (Subject::Agent(agent.id), agent.disabled_pushed),
            _ => (Subject::User(user.id), user.disabled_pushed),
        };
        if let Err(error) = self.claim_and_disable(subject, already_pushed, lookup, deadline) {
            tracing::warn!(%error, ?subject, "disable claim failed; a later request retries");
        }
        let state = match block {
            Block::Agent => UserState::Disabled,
            Block::Expired => UserState::Expired,
            Block::LimitReached => UserState::LimitReached,
        };
        let headers = headers::blocked_quota_headers(&quota_of(user)).to_vec();
        let body = if request.head_only {
            String::new()
        } else {
            notice_link(state, request.lang)
        };
        self.finish(request, user, state, headers, body)
    }

    /// Claims the disable of `subject` in the database (the first time, or
    /// a due retry), and when this request won the claim, calls the panels
    /// in a coroutine of its own: the answer does not wait for them, and a
    /// request that times out cannot cut a disable short.
    fn claim_and_disable(
        &self,
        subject: Subject,
        already_pushed: bool,
        lookup: &Lookup,
        deadline: Deadline,
    ) -> Result<(), DbError> {
        // The flag is set only once every panel confirmed: nothing is left
        // to do. Otherwise this is the first claim, or a due retry of a
        // claim whose panels did not all confirm (or whose process died).
        if already_pushed {
            return Ok(());
        }
        // A lease never ends before the disable it covers could still be
        // running, so a retry cannot overlap the attempt before it.
        let shortest_lease = u32::try_from(self.inner.settings.disable_timeout.as_secs())
            .unwrap_or(u32::MAX)
            .saturating_add(DISABLE_LEASE_MARGIN_SECONDS);
        let lease = move |attempt| retry_backoff_seconds(attempt).max(shortest_lease);
        let claimed = self.inner.db.run(deadline.instant(), move |conn| {
            if queries::claim_disable(conn, subject, lease(1))? {
                return Ok(true);
            }
            Ok(queries::claim_retry(conn, subject, lease)?.is_some())
        })?;
        if !claimed {
            return Ok(());
        }

        let this = self.clone();
        let owner_id = lookup.owner_id;
        let accounts = lookup.accounts.clone();
        may::go!(move || this.disable_everywhere(subject, owner_id, accounts));
        Ok(())
    }

    fn disable_everywhere(&self, subject: Subject, owner_id: i64, accounts: Vec<PanelAccount>) {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.settings.disable_timeout;
        let accounts = match subject {
            Subject::User(_) => accounts,
            Subject::Agent(_) => {
                let queries = inner.queries.clone();
                let admin_ids = inner.settings.admin_ids.clone();
                match inner.db.run(deadline, move |conn| {
                    queries.owner_accounts(conn, owner_id, &admin_ids)
                }) {
                    Ok(accounts) => accounts,
                    Err(error) => {
                        tracing::error!(%error, ?subject, "cannot list the accounts to disable");
                        return;
                    }
                }
            }
        };

        let results = self.run_parallel(&accounts, deadline, move |this, account| {
            let started = Instant::now();
            let result = this.inner.panels.disable_user(
                &panel_ref(account),
                &account.remote_username,
                deadline,
            );
            let outcome = match &result {
                Ok(()) => "ok",
                Err(error) => error.kind(),
            };
            this.inner
                .metrics
                .panel_call(account.panel_id, "disable", started, outcome);
            result
        });

        let mut failed = 0usize;
        for (account, result) in accounts.iter().zip(&results) {
            // An account the panel does not know cannot be used either.
            let confirmed = matches!(result, Some(Ok(()) | Err(PanelError::NotFound)));
            let outcome = if confirmed { "pushed" } else { "failed" };
            inner
                .metrics
                .disables
                .get_or_create(&DisableLabels {
                    panel_id: account.panel_id,
                    outcome,
                })
                .inc();
            if !confirmed {
                failed += 1;
                let error = match result {
                    Some(Err(error)) => error.to_string(),
                    _ => "no answer in time".to_string(),
                };
                tracing::error!(
                    panel_id = account.panel_id,
                    panel = %account.panel_name,
                    remote_user = %account.remote_username,
                    error,
                    "disable failed on a panel; it will be retried"
                );
            }
        }

        let deadline = Instant::now() + Duration::from_secs(10);
        let done = if failed == 0 {
            inner
                .db
                .run(deadline, move |conn| queries::finish_disable(conn, subject))
        } else {
            // The claim already set the next attempt; nothing to write.
            Ok(())
        };
        match done {
            Ok(()) if failed == 0 => {
                tracing::info!(
                    ?subject,
                    accounts = accounts.len(),
                    "remote accounts disabled"
                );
            }
            Ok(()) => {}
            Err(error) => tracing::warn!(%error, ?subject, "cannot record the finished disable"),
        }
    }

    /// The links of every account, fetched in parallel through the cache,
    /// filtered per panel and merged in account order; and the names of the
    /// panels that gave nothing.
    fn collect_links(
        &self,
        accounts: &[PanelAccount],
        deadline: Deadline,
    ) -> (Vec<String>, Vec<String>) {
        // Stop panel calls a little before the request deadline, so the
        // answer can still carry whatever arrived in time.
        let remaining = deadline.remaining();
        let margin = (remaining / 10).clamp(Duration::from_millis(50), Duration::from_secs(2));
        let fetch_deadline = deadline
            .instant()
            .checked_sub(margin)
            .unwrap_or(deadline.instant());

        let answers = self.run_parallel(accounts, fetch_deadline, move |this, account| {
            this.cached_links(account, fetch_deadline)
        });

        let mut failures = Vec::new();
        let mut per_panel = Vec::with_capacity(accounts.len());
        for (account, answer) in accounts.iter().zip(answers) {
            let links = match answer {
                Some(cache::Lookup::Fresh(links) | cache::Lookup::Cached(links)) => links,
                Some(cache::Lookup::Stale(links, failure)) => {
                    tracing::warn!(
                        panel_id = account.panel_id,
                        panel = %account.panel_name,
                        reason = %failure_text(&failure),
                        "panel failed; serving its last good answer"
                    );
                    links
                }
                Some(cache::Lookup::Failed(failure)) => {
                    tracing::warn!(
                        panel_id = account.panel_id,
                        panel = %account.panel_name,
                        remote_user = %account.remote_username,
                        reason = %failure_text(&failure),
                        "panel gave no links"
                    );
                    failures.push(display_name(account));
                    continue;
                }
                None => {
                    tracing::warn!(
                        panel_id = account.panel_id,
                        panel = %account.panel_name,
                        "panel did not answer before the request deadline"
                    );
                    failures.push(display_name(account));
                    continue;
                }
            };
            let names: HashSet<String> = account
                .disabled_names
                .iter()
                .map(|name| links::canonical_name(name))
                .collect();
            let numbers: HashSet<u32> = account.disabled_numbers.iter().copied().collect();
            per_panel.push(links::apply_panel_filters(links.to_vec(), &names, &numbers));
        }
        (links::merge(per_panel), failures)
    }

    fn cached_links(
        &self,
        account: &PanelAccount,
        deadline: Instant,
    ) -> cache::Lookup<LinkList, FetchError> {
        let key = (account.panel_id, account.remote_username.clone());
        self.inner.cache.get_or_fetch(key, deadline, || {
            let started = Instant::now();
            let result = self.inner.panels.fetch_links(
                &panel_ref(account),
                &account.remote_username,
                deadline,
            );
            let outcome = match &result {
                Ok(_) => "ok",
                Err(error) => error.kind(),
            };
            self.inner
                .metrics
                .panel_call(account.panel_id, "links", started, outcome);
            result.map(LinkList::from).map_err(Arc::new)
        })
    }

    /// Runs `work` for every account on at most `FETCH_MAX_WORKERS`
    /// coroutines and collects the results in account order. A result that
    /// is not in by `deadline` is `None`; its coroutine finishes on its own.
    fn run_parallel<T, F>(
        &self,
        accounts: &[PanelAccount],
        deadline: Instant,
        work: F,
    ) -> Vec<Option<T>>
    where
        T: Send + 'static,
        F: Fn(&Subscriptions, &PanelAccount) -> T + Send + Sync + 'static,
    {
        let total = accounts.len();
        let mut results: Vec<Option<T>> = (0..total).map(|_| None).collect();
        if total == 0 {
            return results;
        }
        let jobs: Arc<Vec<PanelAccount>> = Arc::new(accounts.to_vec());
        let next = Arc::new(AtomicUsize::new(0));
        let work = Arc::new(work);
        let (sender, receiver) = may::sync::mpsc::channel();
        let workers = self.inner.settings.fetch_max_workers.clamp(1, total);
        for _ in 0..workers {
            let (this, jobs, next, work, sender) = (
                self.clone(),
                jobs.clone(),
                next.clone(),
                work.clone(),
                sender.clone(),
            );
            may::go!(move || {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(account) = jobs.get(index) else {
                        break;
                    };
                    if Instant::now() >= deadline {
                        break;
                    }
                    if sender.send((index, work(&this, account))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);

        let mut received = 0;
        while received < total {
            let wait = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(wait) {
                Ok((index, result)) => {
                    results[index] = Some(result);
                    received += 1;
                }
                Err(_) => break,
            }
        }
        results
    }

    /// The answer for an unknown owner or user.
    fn not_found(&self, request: &SubscriptionRequest, status: u16) -> Response {
        if request.html {
            Response::new(status).with_body(
                "text/html; charset=utf-8",
                page::render_not_found(request.lang),
            )
        } else {
            Response::text(status, "not found\n")
        }
    }

    /// The full answer for a known user: text with the client headers, or
    /// the status page.
    fn finish(
        &self,
        request: &SubscriptionRequest,
        user: &LocalUser,
        state: UserState,
        quota_headers: Vec<Header>,
        body: String,
    ) -> Response {
        let settings = &self.inner.settings;
        let quota = quota_of(user);
        let base = settings
            .public_base_url
            .as_deref()
            .unwrap_or(&request.origin);
        let url = headers::subscription_url(base, &request.username, &request.app_key);
        let quota_headers = if quota_headers.is_empty() {
            quota_header_list(&quota)
        } else {
            quota_headers
        };

        let mut response = if request.html {
            let html = page::render_status(&PageInput {
                username: &user.username,
                state,
                used: quota.used,
                limit: quota.limit,
                expire_at: quota.expire_at,
                now: unix_now(),
                subscription_url: &url,
                lang: request.lang,
            });
            Response::new(200).with_body("text/html; charset=utf-8", html)
        } else {
            Response::text(200, body)
        };
        for (name, value) in quota_headers {
            response.set_header(name, value);
        }
        let (name, value) = headers::subscription_userinfo(&quota);
        response.set_header(name, value);
        let (name, value) =
            headers::profile_update_interval(settings.profile_update_interval_hours);
        response.set_header(name, value);
        let (name, value) = headers::profile_title(&user.username);
        response.set_header(name, value);
        if let Some(public) = &settings.public_base_url {
            let (name, value) =
                headers::profile_web_page_url(public, &request.username, &request.app_key);
            response.set_header(name, value);
        }
        if !request.html {
            let (name, value) = headers::content_disposition(&user.username);
            response.set_header(name, value);
        }
        response.set_header("Cache-Control", "no-store");
        response
    }
}

fn quota_header_list(quota: &Quota) -> Vec<Header> {
    headers::quota_headers(quota).to_vec()
}

fn failure_text(failure: &Failure<FetchError>) -> String {
    match failure {
        Failure::Fetch(error) => error.to_string(),
        Failure::Deadline => "no answer before the request deadline".to_string(),
    }
}

/// One pseudo-config line whose name tells a blocked user why, as VPN client
/// apps show config names and nothing else. It points at a reserved address
/// and cannot connect anywhere.
fn notice_link(state: UserState, lang: Lang) -> String {
    let reason = match (state, lang) {
        (UserState::LimitReached, Lang::Fa) => "حجم اشتراک تمام شده است",
        (UserState::LimitReached, Lang::En) => "traffic limit reached",
        (UserState::Expired, Lang::Fa) => "اشتراک منقضی شده است",
        (UserState::Expired, Lang::En) => "subscription expired",
        (_, Lang::Fa) => "اشتراک غیرفعال است",
        (_, Lang::En) => "subscription disabled",
    };
    let name = percent_encoding::utf8_percent_encode(reason, percent_encoding::NON_ALPHANUMERIC);
    format!("vless://00000000-0000-0000-0000-000000000000@0.0.0.0:1?encryption=none#{name}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(limit: i64, used: i64, expire_at: Option<i64>) -> LocalUser {
        LocalUser {
            id: 1,
            owner_id: 7,
            username: "ali".into(),
            plan_limit_bytes: limit,
            used_bytes: used,
            expire_at,
            disabled_pushed: false,
        }
    }

    #[test]
    fn the_user_gate_checks_quota_then_expiry() {
        assert_eq!(user_block(&user(0, 10, None), 100), None);
        assert_eq!(user_block(&user(10, 9, Some(101)), 100), None);
        assert_eq!(
            user_block(&user(10, 10, None), 100),
            Some(Block::LimitReached)
        );
        assert_eq!(
            user_block(&user(0, 0, Some(100)), 100),
            Some(Block::Expired)
        );
    }

    #[test]
    fn the_agent_gate_checks_expiry_and_total_use() {
        let agent = |limit, used, expire_at| Agent {
            id: 1,
            plan_limit_bytes: limit,
            total_used_bytes: used,
            expire_at,
            disabled_pushed: false,
        };
        assert!(!agent_blocks(&agent(0, 99, None), 100));
        assert!(agent_blocks(&agent(50, 50, None), 100));
        assert!(agent_blocks(&agent(0, 0, Some(99)), 100));
        assert!(!agent_blocks(&agent(0, 0, Some(101)), 100));
    }

    #[test]
    fn retries_back_off_up_to_six_hours() {
        assert_eq!(retry_backoff_seconds(1), 60);
        assert_eq!(retry_backoff_seconds(2), 120);
        assert_eq!(retry_backoff_seconds(4), 480);
        assert_eq!(retry_backoff_seconds(40), 6 * 3600);
    }

    #[test]
    fn the_notice_is_one_config_line_with_a_readable_name() {
        let line = notice_link(UserState::Expired, Lang::En);
        assert!(line.starts_with("vless://") && line.ends_with('\n'));
        assert_eq!(
            links::config_name(line.trim()).as_deref(),
            Some("subscription expired")
        );
    }
}
