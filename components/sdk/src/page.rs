//! Pages of a list: every list of the API is read in id order, a page at a
//! time, so that its answer stays small however long the list grows (an
//! unpaginated list passes the host's response limit at some length and
//! answers 500 from then on).
//!
//! `?limit=` items a page (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]); `?after=<id>` starts after that id. The answer is
//! `{"items":[...],"next":<id>|null}`: `next` is the `after` of the next
//! page, null on the last one.

use serde::Serialize;

use crate::db::Value;
use crate::error::Error;
use crate::http::{Request, Response};
use crate::id::{self, Id};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1_000;

/// Which page a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub after: Option<Id>,
}

impl Page {
    /// The page `?limit=` and `?after=` ask for; 400 for values that are
    /// not a limit from 1 to [`MAX_LIMIT`] or an id.
    pub fn from_request(request: &Request) -> Result<Page, Error> {
        let limit = match request.query_param("limit") {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit) && !text.starts_with('+'))
                .ok_or_else(|| {
                    Error::bad_request(format!("limit must be an integer from 1 to {MAX_LIMIT}, not `{text}`"))
                })?,
        };
        let after = match request.query_param("after") {
            None => None,
            Some(text) => Some(
                Id::parse(text)
                    .ok_or_else(|| Error::bad_request(format!("after must be {}, not `{text}`", id::EXPECTED)))?,
            ),
        };
        Ok(Page { limit, after })
    }

    /// The SQL parameters for `... WHERE id > ? ORDER BY id LIMIT ?`: the
    /// cursor, and one row more than the page holds (whether a next page
    /// exists).
    pub fn params(&self) -> [Value; 2] {
        [
            Value::Integer(self.after.map_or(0, Id::get)),
            Value::Integer(i64::from(self.limit) + 1),
        ]
    }

    /// The answer for `rows`, read with [`Page::params`] in id order.
    pub fn answer<T: Serialize>(&self, mut items: Vec<T>, id_of: impl Fn(&T) -> i64) -> Response {
        let limit = self.limit as usize;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(&id_of)
        } else {
            None
        };
        Response::json(200, &serde_json::json!({ "items": items, "next": next }))
    }
}

#[cfg(test)]
mod tests {
    use super::{DEFAULT_LIMIT, Page};
    use crate::http::Request;

    fn page(query: &str) -> Result<Page, u16> {
        let request = Request {
            method: "GET".into(),
            path: "/things".into(),
            query: Some(query.into()),
            headers: Vec::new(),
            body: Vec::new(),
        };
        Page::from_request(&request).map_err(|err| err.into_response().status)
    }

    #[test]
    fn limits_and_cursors_are_checked() {
        assert_eq!(
            page(""),
            Ok(Page {
                limit: DEFAULT_LIMIT,
                after: None
            })
        );
        assert_eq!(
            page("limit=1000&after=7").map(|p| (p.limit, p.after.map(|id| id.get()))),
            Ok((1000, Some(7)))
        );
        for bad in [
            "limit=0",
            "limit=-1",
            "limit=x",
            "limit=",
            "limit=1001",
            "limit=+5",
            "after=0",
            "after=x",
        ] {
            assert_eq!(page(bad), Err(400), "{bad}");
        }
    }

    #[test]
    fn next_is_the_last_id_of_a_full_page() {
        let two = Page { limit: 2, after: None };
        let body = |items: Vec<i64>| String::from_utf8(two.answer(items, |id| *id).body).unwrap();
        assert_eq!(body(vec![1, 2, 3]), r#"{"items":[1,2],"next":2}"#);
        assert_eq!(body(vec![1, 2]), r#"{"items":[1,2],"next":null}"#);
    }
}
