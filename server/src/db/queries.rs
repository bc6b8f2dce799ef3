//! The SQL of the subscription path: one statement that reads everything a
//! request for a user under quota needs, and the atomic claims that make a
//! disable happen once across every valhalla process sharing the database.

use mysql::prelude::Queryable;
use mysql::{Row, Value};

/// The statements of the request path, built once at startup because the
/// owner-set rule depends on `ADMIN_IDS`.
#[derive(Debug, Clone)]
pub struct Queries {
    lookup: String,
    owner_panels: String,
    owner_accounts: String,
}

/// The local user a subscription URL resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    pub id: i64,
    pub owner_id: i64,
    pub username: String,
    pub plan_limit_bytes: i64,
    pub used_bytes: i64,
    /// Unix seconds (UTC); `None` for no expiry.
    pub expire_at: Option<i64>,
    pub disabled_pushed: bool,
}

/// The reseller whose quota covers the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub id: i64,
    pub plan_limit_bytes: i64,
    pub total_used_bytes: i64,
    pub expire_at: Option<i64>,
    pub disabled_pushed: bool,
}

/// One remote account to read links from or to disable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelAccount {
    pub panel_id: i64,
    pub panel_name: String,
    pub panel_type: String,
    pub panel_url: String,
    pub access_token: String,
    pub remote_username: String,
    /// Config names disabled on this panel, as stored.
    pub disabled_names: Vec<String>,
    /// 1-based config positions disabled on this panel.
    pub disabled_numbers: Vec<u32>,
}

/// Everything one subscription request needs, from one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub owner_id: i64,
    pub user: Option<LocalUser>,
    pub agent: Option<Agent>,
    /// The user's panel links in link order; when it has none, every panel of
    /// the owner set with the local username.
    pub accounts: Vec<PanelAccount>,
}

/// Which row a disable claim or retry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    User(i64),
    Agent(i64),
}

impl Subject {
    fn parts(self) -> (&'static str, i64) {
        match self {
            Subject::User(id) => ("user", id),
            Subject::Agent(id) => ("agent", id),
        }
    }

    /// The table holding the subject's `disabled_pushed` flag.
    fn table(self) -> &'static str {
        match self {
            Subject::User(_) => "local_users",
            Subject::Agent(_) => "agents",
        }
    }
}

/// `column` belongs to the owner set of the app user `au`: the owner itself
/// or, when the owner is an admin, any admin.
fn owner_set(column: &str, admin_ids: &[i64]) -> String {
    if admin_ids.is_empty() {
        return format!("{column} = au.telegram_user_id");
    }
    let admins = admin_ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "({column} = au.telegram_user_id \
         OR (au.telegram_user_id IN ({admins}) AND {column} IN ({admins})))"
    )
}

/// The same rule for statements that know the owner id as a parameter.
fn owner_set_of_param(column: &str, owner_id: i64, admin_ids: &[i64]) -> String {
    if admin_ids.contains(&owner_id) {
        let admins = admin_ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        format!("{column} IN ({admins})")
    } else {
        format!("{column} = {owner_id}")
    }
}

/// The column of the lookup that holds the link's id, which orders the
/// accounts.
const LINK_ID_COLUMN: usize = 22;

/// Unix seconds of a DATETIME, read in the session's UTC zone. Zero dates,
/// which old rows may hold, count as no expiry.
fn unix(column: &str) -> String {
    format!("CAST(UNIX_TIMESTAMP({column}) AS SIGNED)")
}

impl Queries {
    pub fn new(admin_ids: &[i64]) -> Queries {
        let lookup = format!(
            "SELECT au.id, au.telegram_user_id,
                lu.id, lu.owner_id, lu.username, COALESCE(lu.plan_limit_bytes, 0),
                COALESCE(lu.used_bytes, 0), {user_expiry}, COALESCE(lu.disabled_pushed, 0),
                ag.id, COALESCE(ag.plan_limit_bytes, 0), COALESCE(ag.total_used_bytes, 0),
                {agent_expiry}, COALESCE(ag.disabled_pushed, 0),
                p.id, p.name, p.panel_type, p.panel_url, p.access_token,
                COALESCE(l.remote_username, lu.username),
                (SELECT JSON_ARRAYAGG(dc.config_name) FROM panel_disabled_configs dc
                    WHERE dc.panel_id = p.id),
                (SELECT JSON_ARRAYAGG(dn.config_index) FROM panel_disabled_numbers dn
                    WHERE dn.panel_id = p.id),
                l.id
            FROM app_users au
            LEFT JOIN local_users lu ON lu.id = (
                SELECT u.id FROM local_users u
                WHERE u.username = ? AND {user_owner}
                ORDER BY u.owner_id = au.telegram_user_id DESC, u.id LIMIT 1)
            LEFT JOIN agents ag ON ag.id = (
                SELECT a.id FROM agents a
                WHERE a.active = 1 AND {agent_owner}
                ORDER BY a.telegram_user_id = au.telegram_user_id DESC, a.id LIMIT 1)
            LEFT JOIN local_user_panel_links l
                ON l.owner_id = lu.owner_id AND l.local_username = lu.username
            LEFT JOIN panels p
                ON (l.id IS NOT NULL AND p.id = l.panel_id)
                OR (l.id IS NULL AND lu.id IS NOT NULL AND {panel_owner})
            WHERE au.username = ? AND au.app_key = ? AND BINARY au.app_key = BINARY ?",
            user_expiry = unix("lu.expire_at"),
            agent_expiry = unix("ag.expire_at"),
            user_owner = owner_set("u.owner_id", admin_ids),
            agent_owner = owner_set("a.telegram_user_id", admin_ids),
            panel_owner = owner_set("p.telegram_user_id", admin_ids),
        );
        // The two statements below are completed per owner at run time; the
        // markers keep the admin rule in one place.
        let owner_panels = "SELECT p.id, p.name, p.panel_type, p.panel_url, p.access_token, ? \
             FROM panels p WHERE {owner:p.telegram_user_id} ORDER BY p.id"
            .to_string();
        let owner_accounts = "SELECT p.id, p.name, p.panel_type, p.panel_url, p.access_token, \
             COALESCE(l.remote_username, u.username) \
             FROM local_users u \
             LEFT JOIN local_user_panel_links l \
                ON l.owner_id = u.owner_id AND l.local_username = u.username \
             JOIN panels p ON (l.id IS NOT NULL AND p.id = l.panel_id) \
                OR (l.id IS NULL AND {owner:p.telegram_user_id}) \
             WHERE {owner:u.owner_id} ORDER BY u.id, l.id, p.id"
            .to_string();
        Queries {
            lookup,
            owner_panels,
            owner_accounts,
        }
    }

    /// Reads the owner, the local user, the agent and the panel accounts
    /// with their filters. `None` when no app user has this username and
    /// exactly this app key.
    pub fn lookup(
        &self,
        conn: &mut mysql::Conn,
        username: &str,
        app_key: &str,
    ) -> Result<Option<Lookup>, mysql::Error> {
        let mut rows: Vec<Row> = conn.exec(&self.lookup, (username, username, app_key, app_key))?;
        // The rows are put in order here rather than by the statement: an
        // ORDER BY made MariaDB sort them through a temporary table, which
        // halved the statement's throughput. The order is the app user's
        // row, then the link's, then the panel's, with NULLs first as SQL
        // would sort them.
        rows.sort_by_cached_key(|row| {
            let id = |index| {
                row.get_opt::<Option<i64>, usize>(index)
                    .and_then(Result::ok)
                    .flatten()
            };
            (id(0), id(LINK_ID_COLUMN), id(14))
        });
        let mut lookup: Option<Lookup> = None;
        let mut first_app_user = None;
        for mut row in rows {
            let app_user_id: i64 = take(&mut row, 0)?;
            if *first_app_user.get_or_insert(app_user_id) != app_user_id {
                // Two owners gave the same username the same key; the oldest
                // row decides, as a unique key on both would.
                break;
            }
            let entry = lookup.get_or_insert_with(|| Lookup {
                owner_id: 0,
                user: None,
                agent: None,
                accounts: Vec::new(),
            });
            if entry.owner_id == 0 {
                entry.owner_id = take(&mut row, 1)?;
                entry.user = match take::<Option<i64>>(&mut row, 2)? {
                    Some(id) => Some(LocalUser {
                        id,
                        owner_id: take(&mut row, 3)?,
                        username: take(&mut row, 4)?,
                        plan_limit_bytes: take(&mut row, 5)?,
                        used_bytes: take(&mut row, 6)?,
                        expire_at: take::<Option<i64>>(&mut row, 7)?.filter(|&t| t > 0),
                        disabled_pushed: take::<i64>(&mut row, 8)? != 0,
                    }),
                    None => None,
                };
                entry.agent = match take::<Option<i64>>(&mut row, 9)? {
                    Some(id) => Some(Agent {
                        id,
                        plan_limit_bytes: take(&mut row, 10)?,
                        total_used_bytes: take(&mut row, 11)?,
                        expire_at: take::<Option<i64>>(&mut row, 12)?.filter(|&t| t > 0),
                        disabled_pushed: take::<i64>(&mut row, 13)? != 0,
                    }),
                    None => None,
                };
            }
            if let Some(panel_id) = take::<Option<i64>>(&mut row, 14)? {
                entry.accounts.push(PanelAccount {
                    panel_id,
                    panel_name: take::<Option<String>>(&mut row, 15)?.unwrap_or_default(),
                    panel_type: take::<Option<String>>(&mut row, 16)?.unwrap_or_default(),
                    panel_url: take(&mut row, 17)?,
                    access_token: take::<Option<String>>(&mut row, 18)?.unwrap_or_default(),
                    remote_username: take(&mut row, 19)?,
                    disabled_names: json_list(take(&mut row, 20)?),
                    disabled_numbers: json_list::<i64>(take(&mut row, 21)?)
                        .into_iter()
                        .filter_map(|n| u32::try_from(n).ok())
                        .collect(),
                });
            }
        }
        Ok(lookup)
    }

    /// Every remote account of every local user of the owner set: what a
    /// blocked agent's disable must reach.
    pub fn owner_accounts(
        &self,
        conn: &mut mysql::Conn,
        owner_id: i64,
        admin_ids: &[i64],
    ) -> Result<Vec<PanelAccount>, mysql::Error> {
        let sql = with_owner(&self.owner_accounts, owner_id, admin_ids);
        read_accounts(conn.query(sql)?)
    }

    /// Every panel of the owner set, each with `remote_username`.
    pub fn owner_panels(
        &self,
        conn: &mut mysql::Conn,
        owner_id: i64,
        admin_ids: &[i64],
        remote_username: &str,
    ) -> Result<Vec<PanelAccount>, mysql::Error> {
        let sql = with_owner(&self.owner_panels, owner_id, admin_ids);
        read_accounts(conn.exec(sql, (remote_username,))?)
    }
}

/// Fills the `{owner:COLUMN}` markers of a statement for one owner.
fn with_owner(template: &str, owner_id: i64, admin_ids: &[i64]) -> String {
    let mut sql = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{owner:") {
        sql.push_str(&rest[..start]);
        let after = &rest[start + "{owner:".len()..];
        let end = after.find('}').unwrap_or(after.len());
        sql.push_str(&owner_set_of_param(&after[..end], owner_id, admin_ids));
        rest = after.get(end + 1..).unwrap_or("");
    }
    sql.push_str(rest);
    sql
}

fn read_accounts(rows: Vec<Row>) -> Result<Vec<PanelAccount>, mysql::Error> {
    rows.into_iter()
        .map(|mut row| {
            Ok(PanelAccount {
                panel_id: take(&mut row, 0)?,
                panel_name: take::<Option<String>>(&mut row, 1)?.unwrap_or_default(),
                panel_type: take::<Option<String>>(&mut row, 2)?.unwrap_or_default(),
                panel_url: take(&mut row, 3)?,
                access_token: take::<Option<String>>(&mut row, 4)?.unwrap_or_default(),
                remote_username: take(&mut row, 5)?,
                disabled_names: Vec::new(),
                disabled_numbers: Vec::new(),
            })
        })
        .collect()
}

/// Claims the first disable of the subject: true means this caller won and
/// must call the panels; the database decides, so two requests or two
/// processes never both do.
///
/// The claim is a row in `valhalla_disable_retries` whose `next_attempt_at`
/// is the lease: if this process dies before the panels confirm, a later
/// request finds the expired lease and retries. `disabled_pushed` is set
/// only by [`finish_disable`], once every panel confirmed.
pub fn claim_disable(
    conn: &mut mysql::Conn,
    subject: Subject,
    lease_seconds: u32,
) -> Result<bool, mysql::Error> {
    // The claim is taken only while the flag is still 0, in the same
    // statement: a request that read the row before another finished the
    // disable (flag set, claim removed, in one transaction) sees the flag
    // here and claims nothing. IGNORE turns only the duplicate key of a
    // pending claim into "no row inserted".
    let (kind, id) = subject.parts();
    let sql = format!(
        "INSERT IGNORE INTO valhalla_disable_retries \
            (subject, subject_id, attempts, next_attempt_at) \
         SELECT ?, id, 1, UTC_TIMESTAMP() + INTERVAL ? SECOND \
         FROM {} WHERE id = ? AND disabled_pushed = 0",
        subject.table()
    );
    conn.exec_drop(sql, (kind, lease_seconds, id))?;
    Ok(conn.affected_rows() == 1)
}

/// Takes a due retry of an earlier disable that the panels did not confirm.
/// Returns the attempt number when this caller won it; the next attempt is
/// pushed back by `backoff(attempt)` seconds in the same statement, so only
/// one caller retries at a time.
pub fn claim_retry(
    conn: &mut mysql::Conn,
    subject: Subject,
    backoff_seconds: impl Fn(u32) -> u32,
) -> Result<Option<u32>, mysql::Error> {
    let (kind, id) = subject.parts();
    let attempts: Option<u32> = conn.exec_first(
        "SELECT attempts FROM valhalla_disable_retries \
         WHERE subject = ? AND subject_id = ? AND next_attempt_at <= UTC_TIMESTAMP()",
        (kind, id),
    )?;
    let Some(attempts) = attempts else {
        return Ok(None);
    };
    let next = attempts.saturating_add(1);
    conn.exec_drop(
        "UPDATE valhalla_disable_retries \
         SET attempts = ?, next_attempt_at = UTC_TIMESTAMP() + INTERVAL ? SECOND \
         WHERE subject = ? AND subject_id = ? AND attempts = ? \
           AND next_attempt_at <= UTC_TIMESTAMP()",
        (next, backoff_seconds(next), kind, id, attempts),
    )?;
    Ok((conn.affected_rows() == 1).then_some(next))
}

/// Records that every panel confirmed the disable: the subject's
/// `disabled_pushed` flag is set and its claim removed, in one transaction.
pub fn finish_disable(conn: &mut mysql::Conn, subject: Subject) -> Result<(), mysql::Error> {
    let (kind, id) = subject.parts();
    let mut tx = conn.start_transaction(mysql::TxOpts::default())?;
    tx.exec_drop(
        format!(
            "UPDATE {} SET disabled_pushed = 1, disabled_pushed_at = UTC_TIMESTAMP() WHERE id = ?",
            subject.table()
        ),
        (id,),
    )?;
    tx.exec_drop(
        "DELETE FROM valhalla_disable_retries WHERE subject = ? AND subject_id = ?",
        (kind, id),
    )?;
    tx.commit()
}

fn take<T: mysql::prelude::FromValue>(row: &mut Row, index: usize) -> Result<T, mysql::Error> {
    match row.take_opt::<T, usize>(index) {
        Some(Ok(value)) => Ok(value),
        Some(Err(error)) => Err(mysql::Error::FromValueError(error.0)),
        None => Err(mysql::Error::FromValueError(Value::NULL)),
    }
}

/// A JSON array built by `JSON_ARRAYAGG`; NULL (no rows) is empty.
fn json_list<T: serde::de::DeserializeOwned>(json: Option<String>) -> Vec<T> {
    json.and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_markers_follow_the_admin_rule() {
        let sql = "WHERE {owner:p.telegram_user_id} AND {owner:u.owner_id}";
        assert_eq!(
            with_owner(sql, 7, &[1, 2]),
            "WHERE p.telegram_user_id = 7 AND u.owner_id = 7"
        );
        assert_eq!(
            with_owner(sql, 2, &[1, 2]),
            "WHERE p.telegram_user_id IN (1,2) AND u.owner_id IN (1,2)"
        );
    }

    #[test]
    fn without_admins_the_owner_set_is_the_owner() {
        assert_eq!(
            owner_set("u.owner_id", &[]),
            "u.owner_id = au.telegram_user_id"
        );
        assert!(owner_set("u.owner_id", &[5]).contains("au.telegram_user_id IN (5)"));
    }
}
