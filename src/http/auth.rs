//! Who is calling: the client key of a request (`Authorization: Bearer KEY`), checked against
//! `--api-keys`, and what that caller may see. Every route except `/health` and `/ready` calls
//! [`authorize`]; routes for operators add [`admin_only`] (or [`sees_all_only`] for what a read
//! key may watch); a route about one job looks it up with [`visible_job`], which answers "no such
//! job" for another key's job exactly as for an unknown id, and a route that changes a job or
//! submits one adds [`may_change`] (a read key changes nothing).
//!
//! Without `--api-keys` the coordinator is open: every request is an anonymous admin.

use crate::base::api_keys::{ApiKey, Role};
use crate::base::clock::{unix_now, utc_text};
use crate::base::job::Job;
use crate::base::log_repeats::{LineBudget, Repeats};
use crate::base::sync::lock;
use crate::http::headers;
use crate::http::replies::{error_reply, Reply};
use crate::http::sandrun_parts::ArchivesRefusedBy;
use crate::state::context::Context;
use crate::state::metrics::KeyRefusal;
use crate::state::pool_state::PoolState;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tiny_http::Request;

/// The log lines of refused keys: bursts of 20, then one a second (the metrics count them all).
static REFUSAL_LINES: Mutex<LineBudget> = Mutex::new(LineBudget::new(20, Duration::from_secs(1)));

/// Logs a refused request's line within [`REFUSAL_LINES`], at `level`, with the count of the
/// lines held back before it.
fn log_refusal(level: log::Level, line: impl FnOnce() -> String) {
    if let Some(held) = lock(&REFUSAL_LINES).check(Instant::now()) {
        log::log!(level, "{}{}", line(), Repeats::suffix(held));
    }
}

/// The `WWW-Authenticate` challenge of a request without a key.
const CHALLENGE: &str = "Bearer realm=\"trusted-pool\"";
/// The challenge of a request whose key is not known.
const CHALLENGE_INVALID: &str = "Bearer realm=\"trusted-pool\", error=\"invalid_token\"";

/// The authorized sender of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    name: Option<String>,
    role: Role,
    max_queued_jobs: Option<usize>,
    key_sha256: Option<[u8; 32]>,
    expires: Option<u64>,
    archives: Option<bool>,
}

impl Caller {
    /// The caller of an open coordinator (no `--api-keys`): anonymous, sees everything.
    pub fn open() -> Self {
        Caller {
            name: None,
            role: Role::Admin,
            max_queued_jobs: None,
            key_sha256: None,
            expires: None,
            archives: None,
        }
    }

    /// The caller holding this key.
    pub fn from_key(key: &ApiKey) -> Self {
        Caller {
            name: Some(key.name.clone()),
            role: key.role,
            max_queued_jobs: key.max_queued_jobs,
            key_sha256: Some(key.key_sha256),
            expires: key.expires,
            archives: key.archives,
        }
    }

    /// The SHA-256 of the key it sent (None on an open coordinator).
    pub fn key_sha256(&self) -> Option<&[u8; 32]> {
        self.key_sha256.as_ref()
    }

    /// When its key stops being accepted, in unix seconds (None: never).
    pub fn expires(&self) -> Option<u64> {
        self.expires
    }

    /// The key's name (None on an open coordinator). Safe to log.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The key's role (`Admin` on an open coordinator).
    pub fn role(&self) -> Role {
        self.role
    }

    /// True when the caller sees and controls every job and the whole pool.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// True when the caller sees every job and the whole pool: an admin or a read key.
    pub fn sees_all(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Read)
    }

    /// Who refuses this caller's archives (files a sandrun worker unpacks; None: they are taken):
    /// its key's `archives` where the keys file sets it, else `refuse_archives`
    /// (`--refuse-archives`).
    pub fn archives_refused(&self, refuse_archives: bool) -> Option<ArchivesRefusedBy> {
        match self.archives {
            Some(true) => None,
            Some(false) => Some(ArchivesRefusedBy::Key(
                self.name.clone().unwrap_or_default(),
            )),
            None => refuse_archives.then_some(ArchivesRefusedBy::Coordinator),
        }
    }

    /// The most jobs of this caller that may wait in the queue (None: no limit).
    pub fn max_queued_jobs(&self) -> Option<usize> {
        self.max_queued_jobs
    }

    /// True when the caller may see this job: an admin or a read key, or the key that submitted
    /// it (which may also act on it, as an admin may: see [`may_change`]).
    pub fn can_see(&self, job: &Job) -> bool {
        self.can_see_owned_by(job.owner.as_deref())
    }

    /// Whether this caller may see a job submitted by `owner` (`can_see` by the owner alone).
    pub fn can_see_owned_by(&self, owner: Option<&str>) -> bool {
        self.sees_all() || (self.name.is_some() && owner == self.name.as_deref())
    }

    /// "key NAME" for log lines, "" on an open coordinator.
    pub fn log_label(&self) -> String {
        self.name
            .as_deref()
            .map_or_else(String::new, |n| format!(" (key {n})"))
    }
}

/// The bearer token of a request's `Authorization` value, if it has one.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A 401 with its `WWW-Authenticate` challenge.
fn unauthorized(challenge: &str, message: &str) -> Reply {
    Reply::WithHeaders(
        vec![("WWW-Authenticate", challenge.to_string())],
        Box::new(error_reply(401, message)),
    )
}

/// Who sent `request`, from client address `client`: `Ok` with the caller, or the 401 to
/// answer (403 for a key sent from outside its `bound_cidrs`, which names the address it
/// came from). Never logs the key.
pub fn authorize(
    ctx: &Context,
    request: &Request,
    client: Option<IpAddr>,
) -> Result<Caller, Reply> {
    let Some(keys) = ctx.keys.get() else {
        return Ok(Caller::open());
    };
    let from = || client.map_or_else(|| "?".to_string(), |a| a.to_string());
    // A proxy that adds its own key before or after the client's must not decide by order.
    let Ok(authorization) = headers::only(headers::values(request, "Authorization")) else {
        return Err(error_reply(
            400,
            "the request carries more than one Authorization header; send one: Authorization: Bearer <key>",
        ));
    };
    let Some(token) = bearer(authorization) else {
        ctx.metrics.key_refused(KeyRefusal::Missing);
        log_refusal(log::Level::Info, || {
            format!(
                "Refused {} {}: no client key (from {})",
                request.method(),
                path_of(request),
                from()
            )
        });
        return Err(unauthorized(
            CHALLENGE,
            "this coordinator needs a client key: send Authorization: Bearer <key>",
        ));
    };
    match keys.find(token.as_bytes()) {
        Some(key) if key.expired(unix_now() as u64) => {
            ctx.metrics.key_refused(KeyRefusal::Expired);
            let at = key.expires.map(utc_text).unwrap_or_default();
            log_refusal(log::Level::Warn, || {
                format!(
                    "Refused {} {}: the client key {} expired at {at} (from {})",
                    request.method(),
                    path_of(request),
                    key.name,
                    from()
                )
            });
            Err(unauthorized(
                CHALLENGE_INVALID,
                &format!(
                    "this client key ({}) expired at {at}; ask the coordinator's operator for a new one",
                    key.name
                ),
            ))
        }
        Some(key) if !key.allows_from(client) => {
            ctx.metrics.key_refused(KeyRefusal::OutsideBound);
            log_refusal(log::Level::Warn, || {
                format!(
                    "Refused {} {}: the client key {} was sent from {}, outside its bound_cidrs ({})",
                    request.method(),
                    path_of(request),
                    key.name,
                    from(),
                    key.bound_cidrs_text()
                )
            });
            Err(error_reply(
                403,
                format!(
                    "this client key ({}) may be used only from the addresses its entry binds it to (bound_cidrs); this request came from {}",
                    key.name,
                    from()
                ),
            ))
        }
        Some(key) => Ok(Caller::from_key(key)),
        None => {
            ctx.metrics.key_refused(KeyRefusal::Unknown);
            log_refusal(log::Level::Warn, || {
                format!(
                    "Refused {} {}: unknown client key (from {})",
                    request.method(),
                    path_of(request),
                    from()
                )
            });
            Err(unauthorized(
                CHALLENGE_INVALID,
                "the client key is not known to this coordinator",
            ))
        }
    }
}

fn path_of(request: &Request) -> &str {
    request.url().split(['?', '#']).next().unwrap_or_default()
}

/// `Ok` for an admin, else the 403 to answer.
pub fn admin_only(caller: &Caller) -> Result<(), Reply> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(error_reply(
            403,
            if caller.role() == Role::Read {
                "this needs an admin key (a read key sees, and changes nothing)"
            } else {
                "this needs an admin key"
            },
        ))
    }
}

/// `Ok` for a caller that sees everything (an admin or a read key), else the 403 to answer.
pub fn sees_all_only(caller: &Caller) -> Result<(), Reply> {
    if caller.sees_all() {
        Ok(())
    } else {
        Err(error_reply(403, "this needs an admin or read key"))
    }
}

/// The client key whose jobs a listing or a bulk cancel is held to: for an admin or read key
/// the one `asked` (`owner=`; None: every key's), for a submit key itself (`owner=` naming
/// another key is the 403 to answer; an empty one the 400).
pub fn owner_filter(caller: &Caller, asked: Option<String>) -> Result<Option<String>, Reply> {
    if asked.as_deref() == Some("") {
        return Err(error_reply(
            400,
            "owner= names no client key: give a key's name (as in the --api-keys file), or leave it out for every key's jobs",
        ));
    }
    if caller.sees_all() {
        return Ok(asked);
    }
    let own = caller.name().map(str::to_string);
    if asked.is_some() && asked != own {
        return Err(error_reply(
            403,
            "a submit key sees and acts on its own jobs only: leave out owner=, or use an admin key",
        ));
    }
    Ok(own)
}

/// `Ok` unless the caller holds a read key, which changes nothing (no submit, cancel, priority
/// or deletion); else the 403 to answer.
pub fn may_change(caller: &Caller) -> Result<(), Reply> {
    if caller.role() == Role::Read {
        Err(error_reply(
            403,
            "this is a read key: it sees every job and the pool, and changes nothing; submit or act with a submit or admin key",
        ))
    } else {
        Ok(())
    }
}

/// The job with this id if the caller may see it; `None` for an unknown id and for another
/// key's job alike (answer both with [`crate::http::replies::unknown_job`]).
pub fn visible_job<'a>(st: &'a PoolState, caller: &Caller, id: &str) -> Option<&'a Job> {
    st.jobs
        .get(id)
        .map(|job| &**job)
        .filter(|job| caller.can_see(job))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, role: Role) -> ApiKey {
        ApiKey {
            name: name.to_string(),
            key_sha256: [0; 32],
            role,
            max_queued_jobs: None,
            expires: None,
            bound_cidrs: Vec::new(),
            archives: None,
        }
    }

    #[test]
    fn owners_see_their_jobs_admins_read_keys_and_open_callers_see_all() {
        let mut job = Job::new("pool-1".into(), Vec::new(), None, 0.0);
        job.owner = Some("alice".into());
        let mut unowned = job.clone();
        unowned.owner = None;
        let alice = Caller::from_key(&key("alice", Role::Submit));
        let bob = Caller::from_key(&key("bob", Role::Submit));
        let ops = Caller::from_key(&key("ops", Role::Admin));
        assert!(alice.can_see(&job) && !bob.can_see(&job) && ops.can_see(&job));
        assert!(Caller::open().can_see(&job) && Caller::open().can_see(&unowned));
        assert!(!alice.can_see(&unowned) && ops.can_see(&unowned));
        assert!(admin_only(&ops).is_ok() && admin_only(&alice).is_err());
        let watcher = Caller::from_key(&key("wall", Role::Read));
        assert!(watcher.can_see(&job) && watcher.can_see(&unowned));
        assert!(admin_only(&watcher).is_err() && may_change(&watcher).is_err());
        assert!(sees_all_only(&watcher).is_ok() && sees_all_only(&alice).is_err());
        assert!(may_change(&alice).is_ok() && may_change(&ops).is_ok());
    }

    #[test]
    fn a_keys_archives_setting_overrides_the_coordinators() {
        let with = |archives| {
            Caller::from_key(&ApiKey {
                archives,
                ..key("ci", Role::Submit)
            })
        };
        for refuse in [false, true] {
            assert_eq!(with(Some(true)).archives_refused(refuse), None);
            assert_eq!(
                with(Some(false)).archives_refused(refuse),
                Some(ArchivesRefusedBy::Key("ci".into()))
            );
        }
        assert_eq!(with(None).archives_refused(false), None);
        assert_eq!(
            with(None).archives_refused(true),
            Some(ArchivesRefusedBy::Coordinator)
        );
        assert_eq!(
            Caller::open().archives_refused(true),
            Some(ArchivesRefusedBy::Coordinator)
        );
    }
}
