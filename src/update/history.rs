//! The update history and the signed-channel memory, in butler's database: what every check,
//! install and rollback did, and which channels have served signatures.

use butler_updater::Error as UpdateError;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use crate::db::{self, Db, DbPath};

/// What was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(rename = "UpdateAction")]
pub(crate) enum Action {
    Check,
    Upgrade,
    Rollback,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(rename = "UpdateOutcome")]
pub(crate) enum Outcome {
    Available,
    UpToDate,
    Installed,
    RolledBack,
    Failed,
    Cancelled,
    /// Newer than the running build, but it failed its probation before: not offered.
    KnownBad,
}

/// The database spellings: what serde writes, so the table and the RPC results agree.
macro_rules! spelled {
    ($ty:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        impl $ty {
            pub(crate) fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $s),* }
            }

            fn parse(s: &str) -> Option<$ty> {
                match s { $($s => Some($ty::$variant),)* _ => None }
            }
        }

        impl rusqlite::types::FromSql for $ty {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                $ty::parse(s).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(format!("unknown {} {s:?}", stringify!($ty)).into())
                })
            }
        }
    };
}

spelled!(Action { Check => "check", Upgrade => "upgrade", Rollback => "rollback" });
spelled!(Outcome {
    Available => "available",
    UpToDate => "up-to-date",
    Installed => "installed",
    RolledBack => "rolled-back",
    Failed => "failed",
    Cancelled => "cancelled",
    KnownBad => "known-bad",
});

/// One row to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub(crate) action: Action,
    pub(crate) outcome: Outcome,
    pub(crate) from: Option<&'a str>,
    pub(crate) to: Option<&'a str>,
    pub(crate) error: Option<&'a UpdateError>,
    /// The message when there is no error to take it from.
    pub(crate) note: Option<&'a str>,
    pub(crate) verified: bool,
}

impl<'a> Record<'a> {
    pub(crate) fn new(action: Action, outcome: Outcome) -> Self {
        Record { action, outcome, from: None, to: None, error: None, note: None, verified: false }
    }
}

/// The database side of updates for one channel of one install. A database that cannot be
/// opened does not block an update (butler must stay fixable), but it is said.
pub(crate) struct History {
    db: OnceCell<Option<Db>>,
    /// A command's own connection, still being opened beside the network requests.
    opening: std::sync::Mutex<Option<JoinHandle<Option<Db>>>>,
    /// Writes made while the connection is still opening: the opening thread writes them, in
    /// order, as soon as the database is ready, so a record never holds an update up. `None`
    /// once it has taken them; later writes go to the database directly (after those, since
    /// they wait for the same opening).
    early: std::sync::Arc<std::sync::Mutex<Option<Vec<Write>>>>,
    /// The database did not exist when this command started: it holds nothing recorded before,
    /// so reading it need not wait for it to be created.
    fresh: bool,
    base_url: String,
    channel: String,
    install: String,
}

/// One row to insert, owned so it can wait for the database.
#[derive(Debug)]
pub(crate) enum Write {
    Record {
        time: i64,
        action: Action,
        channel: String,
        install: String,
        from: Option<String>,
        to: Option<String>,
        outcome: Outcome,
        step: Option<String>,
        code: Option<&'static str>,
        message: Option<String>,
        verified: bool,
    },
    Signed {
        base_url: String,
        channel: String,
        time: i64,
    },
}

impl Write {
    /// Inserts the row; a failure is said, not returned (the update goes on regardless).
    fn run(&self, c: &rusqlite::Connection) {
        let inserted = match self {
            Write::Record {
                time,
                action,
                channel,
                install,
                from,
                to,
                outcome,
                step,
                code,
                message,
                verified,
            } => c.execute(
                "INSERT INTO update_history (time, action, channel, install_path, from_version, to_version, outcome, step, error_code, message, verified)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                rusqlite::params![
                    time,
                    action.as_str(),
                    channel,
                    install,
                    from,
                    to,
                    outcome.as_str(),
                    step,
                    code,
                    message,
                    verified
                ],
            ),
            Write::Signed { base_url, channel, time } => c.execute(
                "INSERT OR IGNORE INTO update_signed_channels (base_url, channel, first_seen) VALUES (?1, ?2, ?3)",
                (base_url, channel, time),
            ),
        };
        if let Err(e) = inserted {
            match self {
                Write::Record { .. } => tracing::warn!("could not record the update outcome: {e}"),
                Write::Signed { channel, .. } => {
                    tracing::warn!("could not remember that {channel} is signed: {e}")
                }
            }
        }
    }
}

impl History {
    /// For a command: its own connection to the database `dbpath` names, opened (and on first
    /// use migrated, which costs fsyncs) on a blocking thread while the network is asked.
    pub(crate) fn open(
        dbpath: Option<String>,
        base_url: &str,
        channel: &str,
        install: &str,
    ) -> History {
        let path = DbPath::resolve(dbpath.as_deref());
        let fresh = match &path {
            Ok(DbPath::File(p)) => !p.exists(),
            // In memory: empty at every start.
            Ok(DbPath::Special(_)) => true,
            Err(_) => false,
        };
        let early = std::sync::Arc::new(std::sync::Mutex::new(Some(Vec::<Write>::new())));
        let queued = std::sync::Arc::clone(&early);
        let opening = tokio::task::spawn_blocking(move || {
            let conn = path.and_then(|p| db::open(&p));
            // A short-lived command need not checkpoint the WAL on exit (an fsync-heavy step);
            // the daemon or the next run does it.
            let conn = conn.inspect(|c| {
                let _ = c.set_db_config(
                    rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                    true,
                );
            });
            let writes = queued.lock().unwrap_or_else(|p| p.into_inner()).take();
            match conn {
                Ok(c) => {
                    for w in writes.unwrap_or_default() {
                        w.run(&c);
                    }
                    Some(Db::new(c))
                }
                Err(e) => {
                    tracing::warn!("the update history will not be recorded: {e}");
                    None
                }
            }
        });
        let mut h = History::with_db(None, base_url, channel, install);
        h.db = OnceCell::new();
        h.opening = std::sync::Mutex::new(Some(opening));
        h.early = early;
        h.fresh = fresh;
        h
    }

    /// Over an open database (the daemon's), or none.
    pub(crate) fn with_db(db: Option<Db>, base_url: &str, channel: &str, install: &str) -> History {
        History {
            db: OnceCell::new_with(Some(db)),
            opening: std::sync::Mutex::new(None),
            early: std::sync::Arc::new(std::sync::Mutex::new(None)),
            fresh: false,
            base_url: base_url.trim_end_matches('/').to_owned(),
            channel: channel.to_owned(),
            install: install.to_owned(),
        }
    }

    async fn db(&self) -> Option<&Db> {
        self.db
            .get_or_init(|| async {
                let opening = self.opening.lock().unwrap_or_else(|p| p.into_inner()).take();
                match opening {
                    Some(handle) => handle.await.unwrap_or(None),
                    None => None,
                }
            })
            .await
            .as_ref()
    }

    /// Writes `w` now, or, while the connection is still opening, has the opening thread write
    /// it as soon as it can: nothing waits for the database.
    async fn write(&self, w: Write) {
        if let Some(queue) = self.early.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            queue.push(w);
            return;
        }
        let Some(db) = self.db().await else { return };
        let _ = db
            .call(move |c| {
                w.run(c);
                Ok(())
            })
            .await;
    }

    /// Waits until every write made so far is in the database (or known never to be): a
    /// command calls it before it exits.
    pub(crate) async fn settle(&self) {
        let _ = self.db().await;
    }

    /// Whether this channel served signatures before. Fails closed: when the database cannot
    /// answer, signatures are required, so a busy database never lowers the bar.
    pub(crate) async fn channel_was_signed(&self) -> bool {
        if self.fresh {
            return false;
        }
        let Some(db) = self.db().await else { return false };
        let (url, channel) = (self.base_url.clone(), self.channel.clone());
        let found = db
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM update_signed_channels WHERE base_url = ?1 AND channel = ?2)",
                    (&url, &channel),
                    |r| r.get::<_, bool>(0),
                )?)
            })
            .await;
        found.unwrap_or_else(|e| {
            tracing::warn!(
                "could not read whether {} was signed ({e}); requiring signatures",
                self.channel
            );
            true
        })
    }

    pub(crate) async fn remember_signed(&self) {
        let w = Write::Signed {
            base_url: self.base_url.clone(),
            channel: self.channel.clone(),
            time: crate::report::unix_now() as i64,
        };
        self.write(w).await;
    }

    /// Marks `version` of this channel as bad: it failed its probation, so it is not offered
    /// again (until a newer one is published).
    #[cfg_attr(not(unix), allow(dead_code, reason = "only a restart in place is on probation"))]
    pub(crate) async fn remember_bad(&self, version: &str, reason: &str) {
        let Some(db) = self.db().await else { return };
        let row = (self.channel.clone(), version.to_owned(), reason.to_owned());
        let inserted = db
            .call(move |c| {
                Ok(c.execute(
                    "INSERT OR REPLACE INTO update_bad_versions (channel, version, reason, time) VALUES (?1, ?2, ?3, ?4)",
                    (&row.0, &row.1, &row.2, crate::report::unix_now() as i64),
                )?)
            })
            .await;
        if let Err(e) = inserted {
            tracing::warn!("could not remember that {version} is bad: {e}");
        }
    }

    /// Why `version` of this channel failed its probation, if it did.
    pub(crate) async fn bad_reason(&self, version: &str) -> Option<String> {
        if self.fresh {
            return None;
        }
        let db = self.db().await?;
        let (channel, version) = (self.channel.clone(), version.to_owned());
        db.call(move |c| {
            use rusqlite::OptionalExtension;
            Ok(c.query_row(
                "SELECT reason FROM update_bad_versions WHERE channel = ?1 AND version = ?2",
                (&channel, &version),
                |r| r.get::<_, String>(0),
            )
            .optional()?)
        })
        .await
        .ok()
        .flatten()
    }

    pub(crate) async fn record(&self, r: Record<'_>) {
        let w = Write::Record {
            time: crate::report::unix_now() as i64,
            action: r.action,
            channel: self.channel.clone(),
            install: self.install.clone(),
            from: r.from.map(str::to_owned),
            to: r.to.map(str::to_owned),
            outcome: r.outcome,
            step: r.error.map(|e| e.step.to_string()),
            code: r.error.map(|e| e.kind.class().as_str()),
            message: r.error.map(|e| e.to_string()).or(r.note.map(str::to_owned)),
            verified: r.verified,
        };
        self.write(w).await;
    }
}

/// One row of the update history, newest first from [`recent`].
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "UpdateHistoryEntry")]
pub(crate) struct HistoryEntry {
    /// Unix seconds.
    #[schemars(example = 1796096244)]
    pub(crate) time: i64,
    pub(crate) action: Action,
    #[schemars(example = &"linux-amd64")]
    pub(crate) channel: String,
    #[schemars(example = &"0.1.0")]
    pub(crate) from_version: Option<String>,
    #[schemars(example = &"0.2.0")]
    pub(crate) to_version: Option<String>,
    pub(crate) outcome: Outcome,
    pub(crate) step: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) verified: bool,
}

/// The newest `limit` update outcomes.
pub(crate) fn recent(
    conn: &rusqlite::Connection,
    limit: usize,
) -> Result<Vec<HistoryEntry>, db::DbError> {
    let mut stmt = conn.prepare(
        "SELECT time, action, channel, from_version, to_version, outcome, step, message, verified
         FROM update_history ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(HistoryEntry {
            time: r.get(0)?,
            action: r.get(1)?,
            channel: r.get(2)?,
            from_version: r.get(3)?,
            to_version: r.get(4)?,
            outcome: r.get(5)?,
            step: r.get(6)?,
            message: r.get(7)?,
            verified: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A version that failed its probation.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BadVersion {
    pub(crate) channel: String,
    pub(crate) version: String,
    pub(crate) reason: String,
    /// Unix seconds.
    pub(crate) time: i64,
}

/// Every version that failed its probation, newest first.
pub(crate) fn bad_versions(conn: &rusqlite::Connection) -> Result<Vec<BadVersion>, db::DbError> {
    let mut stmt = conn.prepare(
        "SELECT channel, version, reason, time FROM update_bad_versions ORDER BY time DESC",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(BadVersion {
            channel: r.get(0)?,
            version: r.get(1)?,
            reason: r.get(2)?,
            time: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// When the history last recorded a check.
pub(crate) fn last_check_time(conn: &rusqlite::Connection) -> Result<Option<i64>, db::DbError> {
    Ok(conn.query_row("SELECT max(time) FROM update_history WHERE action = 'check'", [], |r| {
        r.get::<_, Option<i64>>(0)
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_match_what_serde_writes() {
        for a in [Action::Check, Action::Upgrade, Action::Rollback] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        for o in [
            Outcome::Available,
            Outcome::UpToDate,
            Outcome::Installed,
            Outcome::RolledBack,
            Outcome::Failed,
            Outcome::Cancelled,
            Outcome::KnownBad,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
    }
}
