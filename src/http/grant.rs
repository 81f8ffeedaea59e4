//! What a followed job's stream (`/logs/{id}?follow=1`, `/stream/{id}`) holds its client key
//! to. A stream may stay open for hours while its job waits and runs, so its key is checked
//! again whenever the keys are reloaded and when the key expires: a key that was removed,
//! expired, no longer allows the client's address (`bound_cidrs`) or no longer sees the job
//! ends the stream, as its next request would be refused.

use crate::base::api_keys::KeySet;
use crate::base::clock::utc_text;
use crate::http::auth::Caller;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A stream's key, the client it was opened from and the job it follows.
#[derive(Debug, Clone)]
pub struct Grant {
    name: String,
    key_sha256: [u8; 32],
    client: Option<IpAddr>,
    sees_all: bool,
    expires: Option<u64>,
    owner: Option<String>,
}

impl Grant {
    /// The grant of `caller`'s stream from `client` of a job owned by `owner`; `None` on an open
    /// coordinator, where nothing is checked.
    pub fn of(caller: &Caller, client: Option<IpAddr>, owner: Option<String>) -> Option<Grant> {
        Some(Grant {
            name: caller.name()?.to_string(),
            key_sha256: *caller.key_sha256()?,
            client,
            sees_all: caller.sees_all(),
            expires: caller.expires(),
            owner,
        })
    }

    /// How long until the key expires (zero once it has); `None` for a key that never does.
    pub fn until_expiry(&self) -> Option<Duration> {
        let at = UNIX_EPOCH + Duration::from_secs(self.expires?);
        Some(
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }

    /// Checks the grant against the keys in force at unix time `now`: `Err` with why the
    /// stream must end. A key that still holds may have a new expiry, which is kept.
    pub fn recheck(&mut self, keys: Option<&KeySet>, now: u64) -> Result<(), String> {
        let name = &self.name;
        let Some(key) = keys.and_then(|k| k.by_hash(&self.key_sha256)) else {
            return Err(format!("the client key {name} was removed"));
        };
        if key.expired(now) {
            let at = key.expires.map(utc_text).unwrap_or_default();
            return Err(format!("the client key {name} expired at {at}"));
        }
        if !key.allows_from(self.client) {
            let from = self
                .client
                .map_or_else(|| "?".to_string(), |a| a.to_string());
            return Err(format!(
                "the client key {name} may no longer be used from {from} (bound_cidrs {})",
                key.bound_cidrs_text()
            ));
        }
        let caller = Caller::from_key(key);
        if !caller.can_see_owned_by(self.owner.as_deref()) || (self.sees_all && !caller.sees_all())
        {
            return Err(format!(
                "the client key {name} no longer sees this job as it did (its role is now {})",
                key.role.as_str()
            ));
        }
        self.expires = key.expires;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::api_keys::{hash_key, parse};
    use crate::base::hex::hex;

    fn keys(entries: &str) -> KeySet {
        parse(format!("[{entries}]").as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn entry(name: &str, role: &str, extra: &str) -> String {
        let hash = hex(&hash_key(name.as_bytes()));
        format!(r#"{{"name": "{name}", "key_sha256": "{hash}", "role": "{role}"{extra}}}"#)
    }

    fn grant(set: &KeySet, name: &str, client: &str, owner: Option<&str>) -> Grant {
        let key = set
            .find(name.as_bytes())
            .unwrap_or_else(|| panic!("{name}"));
        let client = client.parse().ok();
        Grant::of(&Caller::from_key(key), client, owner.map(str::to_string))
            .unwrap_or_else(|| panic!("no grant"))
    }

    #[test]
    fn a_grant_holds_while_its_key_does() {
        let now = 1_800_000_000;
        let before = keys(&[entry("alice", "submit", ""), entry("ops", "admin", "")].join(","));
        let mut own = grant(&before, "alice", "127.0.0.1", Some("alice"));
        let mut watching = grant(&before, "ops", "127.0.0.1", Some("alice"));
        assert!(own.recheck(Some(&before), now).is_ok());
        assert!(watching.recheck(Some(&before), now).is_ok());
        assert_eq!(own.until_expiry(), None);
        assert!(Grant::of(&Caller::open(), None, None).is_none());

        let after = keys(
            &[
                entry("alice", "submit", r#", "bound_cidrs": ["10.0.0.0/8"]"#),
                entry("ops", "submit", ""),
            ]
            .join(","),
        );
        let why = own.recheck(Some(&after), now).unwrap_err();
        assert!(why.contains("no longer be used from 127.0.0.1"), "{why}");
        let why = watching.recheck(Some(&after), now).unwrap_err();
        assert!(why.contains("its role is now submit"), "{why}");
        let why = own
            .recheck(Some(&keys(&entry("bob", "submit", ""))), now)
            .unwrap_err();
        assert_eq!(why, "the client key alice was removed");

        let expiring = keys(&entry("alice", "submit", r#", "expires": "2099-01-31""#));
        let mut own = grant(&before, "alice", "127.0.0.1", Some("alice"));
        assert!(own.recheck(Some(&expiring), now).is_ok());
        assert!(own.until_expiry().is_some_and(|left| left > Duration::ZERO));
        let why = own.recheck(Some(&expiring), 4_200_000_000).unwrap_err();
        assert!(why.contains("expired at 2099-01-31"), "{why}");
    }
}
