//! A request's query string: its parameters read by name, and checked against the ones its
//! route takes. A route that takes parameters refuses one it does not know, one given twice and
//! one whose `%XX` escapes decode to no text (`QueryError`): a mistyped filter of
//! `POST /cancel?status=queued&ownr=alice` would otherwise cancel everyone's queued jobs.

use crate::base::paths::percent_decode;
use std::fmt;

/// Why a query string is refused (a 400).
#[derive(Debug, PartialEq, Eq)]
pub enum QueryError {
    /// A parameter the route does not take, and those it takes.
    Unknown(String, &'static [&'static str]),
    /// A parameter given more than once.
    Repeated(String),
    /// A parameter whose value's escapes decode to no UTF-8 text.
    Undecodable(String),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Unknown(name, known) => write!(
                f,
                "unknown query parameter {name:?}: this endpoint takes {}",
                known.join(", ")
            ),
            QueryError::Repeated(name) => {
                write!(
                    f,
                    "query parameter {name:?} is given more than once; give it once"
                )
            }
            QueryError::Undecodable(name) => write!(
                f,
                "query parameter {name:?} is not well %-encoded: each % begins an escape %XX, \
                 and the escapes spell UTF-8 text"
            ),
        }
    }
}

/// The `name=value` pairs of `url`'s query (an empty pair skipped; a bare `name` has the
/// value ""), raw.
fn pairs(url: &str) -> impl Iterator<Item = (&str, &str)> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// A value of the query, `+` read as a space and `%XX` decoded.
fn decoded(raw: &str) -> Option<String> {
    percent_decode(&raw.replace('+', " ")).ok()
}

/// The parameter browsers' tools add to defeat caches (`?_=1700000000000`, jQuery's
/// `cache: false`): every route takes it and none reads it.
const CACHE_BUSTER: &str = "_";

/// Checks `url`'s query against `known`, the parameters its route takes (and [`CACHE_BUSTER`]).
pub fn check(url: &str, known: &'static [&'static str]) -> Result<(), QueryError> {
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in pairs(url).filter(|(name, _)| *name != CACHE_BUSTER) {
        // Compared as sent: `st%61tus` is not `status` to the route either.
        if !known.contains(&name) {
            return Err(QueryError::Unknown(name.to_string(), known));
        }
        if seen.contains(&name) {
            return Err(QueryError::Repeated(name.to_string()));
        }
        if decoded(value).is_none() {
            return Err(QueryError::Undecodable(name.to_string()));
        }
        seen.push(name);
    }
    Ok(())
}

/// The decoded value of query parameter `name` in `url`, if given (its first; a value that
/// does not decode reads as "": a route that takes `name` refused it in [`check`] already).
pub fn param(url: &str, name: &str) -> Option<String> {
    pairs(url)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| decoded(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::{check, param, QueryError};

    const KNOWN: &[&str] = &["status", "owner"];

    #[test]
    fn a_query_holds_known_parameters_once_each() {
        assert_eq!(check("/cancel?status=queued&owner=a%20b", KNOWN), Ok(()));
        assert_eq!(check("/cancel", KNOWN), Ok(()));
        assert_eq!(check("/cancel?&status=queued&", KNOWN), Ok(()));
        assert_eq!(
            check("/cancel?status=queued&ownr=alice", KNOWN),
            Err(QueryError::Unknown("ownr".into(), KNOWN))
        );
        assert_eq!(
            check("/cancel?status=queued&status=running", KNOWN),
            Err(QueryError::Repeated("status".into()))
        );
        assert_eq!(
            check("/cancel?owner=%ff", KNOWN),
            Err(QueryError::Undecodable("owner".into()))
        );
        assert!(check("/cancel?owner=%zz", KNOWN).is_err());
        // A browser's cache-busting parameter is taken by every route.
        assert_eq!(
            check("/cancel?status=queued&_=1700000000000", KNOWN),
            Ok(())
        );
    }

    #[test]
    fn a_parameter_is_read_decoded() {
        assert_eq!(param("/x?a=1&b=c+d%2B", "b").as_deref(), Some("c d+"));
        assert_eq!(param("/x?follow", "follow").as_deref(), Some(""));
        assert_eq!(param("/x?a=1#b=2", "b"), None);
        assert_eq!(param("/x", "a"), None);
    }
}
