//! A request's header values by name, and the one value of a header that a request may carry
//! once (`Authorization`, `Content-Type`, `Idempotency-Key`, `Origin`, `Sec-WebSocket-Key`,
//! `Sec-WebSocket-Version`): a second one is refused, since a proxy in front may read it where
//! the coordinator would read the first.

use tiny_http::Request;

/// The values of `request`'s headers named `name` (any case), in the order they came.
pub fn values<'r>(request: &'r Request, name: &'static str) -> impl Iterator<Item = &'r str> + 'r {
    request
        .headers()
        .iter()
        .filter(move |h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// A header given more than once where a request may carry one.
#[derive(Debug, PartialEq, Eq)]
pub struct GivenTwice;

/// The one value among `values` (`None`: none), or [`GivenTwice`] when there are more.
pub fn only<'a>(mut values: impl Iterator<Item = &'a str>) -> Result<Option<&'a str>, GivenTwice> {
    let first = values.next();
    match values.next() {
        Some(_) => Err(GivenTwice),
        None => Ok(first),
    }
}

#[cfg(test)]
mod tests {
    use super::{only, GivenTwice};

    #[test]
    fn one_value_is_taken_and_a_second_refused() {
        assert_eq!(only([].into_iter()), Ok(None));
        assert_eq!(only(["a"].into_iter()), Ok(Some("a")));
        assert_eq!(only(["a", "a"].into_iter()), Err(GivenTwice));
    }
}
