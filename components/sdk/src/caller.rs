//! Who is asking. The host verifies the client's bearer token before a
//! component runs and says who it stands for in the `rentcar-identity`
//! header, which only the host can set (it drops any a client sends). What
//! a caller may do is the component's own business rule: [`Caller::require`]
//! for a role, [`Caller::owns`] for ownership of a row.

use serde::Deserialize;

use crate::error::Error;
use crate::http::Request;

/// The header the host puts the caller in.
pub const IDENTITY_HEADER: &str = "rentcar-identity";

/// The role that may do everything: register cars, read every customer's
/// orders and payments.
pub const ADMIN: &str = "admin";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Caller {
    /// A verified token's subject and roles.
    User { sub: String, roles: Vec<String> },
    /// No token, on a route the host lets anyone read.
    Anonymous,
    /// The host checks no tokens (`[auth] enabled = false`): every caller
    /// may do everything.
    Unchecked,
}

impl Caller {
    pub fn has_role(&self, role: &str) -> bool {
        match self {
            Caller::User { roles, .. } => roles.iter().any(|r| r == role),
            Caller::Anonymous => false,
            Caller::Unchecked => true,
        }
    }

    /// 401 without a token, 403 without `role`.
    pub fn require(&self, role: &str) -> Result<(), Error> {
        match self {
            Caller::Anonymous => Err(Error::refused(401, "unauthorized", "this needs a bearer token")),
            _ if self.has_role(role) => Ok(()),
            _ => Err(Error::refused(
                403,
                "forbidden",
                format!("this needs the `{role}` role"),
            )),
        }
    }

    /// Whether the caller may see or act on what `owner` owns: its owner,
    /// an admin, or anyone when tokens are not checked.
    pub fn owns(&self, owner: &str) -> bool {
        match self {
            Caller::User { sub, .. } => sub == owner || self.has_role(ADMIN),
            Caller::Anonymous => false,
            Caller::Unchecked => true,
        }
    }

    /// Whose rows a list shows: `None` for all of them (an admin, or no
    /// token checks), `Some(sub)` for a user's own; 401 without a token.
    pub fn scope(&self) -> Result<Option<&str>, Error> {
        match self {
            Caller::User { sub, .. } if !self.has_role(ADMIN) => Ok(Some(sub)),
            Caller::User { .. } | Caller::Unchecked => Ok(None),
            Caller::Anonymous => Err(Error::refused(401, "unauthorized", "this needs a bearer token")),
        }
    }

    /// The verified subject, if a token was checked.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Caller::User { sub, .. } => Some(sub),
            Caller::Anonymous | Caller::Unchecked => None,
        }
    }
}

impl Request {
    /// Who is asking (see [`Caller`]); a request the host did not mark is
    /// anonymous.
    pub fn caller(&self) -> Result<Caller, Error> {
        match self.header(IDENTITY_HEADER)? {
            None => Ok(Caller::Anonymous),
            Some(json) => serde_json::from_str(json)
                .map_err(|err| Error::internal(format!("the host's {IDENTITY_HEADER} header is unreadable: {err}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(identity: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: identity
                .map(|value| vec![(IDENTITY_HEADER.to_string(), value.as_bytes().to_vec())])
                .unwrap_or_default(),
            body: Vec::new(),
        }
    }

    #[test]
    fn the_hosts_header_tells_who_is_asking() {
        let kim = request(Some(r#"{"kind":"user","sub":"kim","roles":["customer"]}"#))
            .caller()
            .unwrap();
        assert!(kim.require("customer").is_ok());
        assert_eq!(kim.require(ADMIN).unwrap_err().into_response().status, 403);
        assert!(kim.owns("kim") && !kim.owns("lee"));
        assert_eq!(kim.scope().unwrap(), Some("kim"));

        let admin = request(Some(r#"{"kind":"user","sub":"ops","roles":["admin"]}"#))
            .caller()
            .unwrap();
        assert!(admin.owns("lee"));
        assert_eq!(admin.scope().unwrap(), None);

        let nobody = request(None).caller().unwrap();
        assert_eq!(nobody, Caller::Anonymous);
        assert_eq!(nobody.require("customer").unwrap_err().into_response().status, 401);
        assert!(!nobody.owns("kim"));

        let unchecked = request(Some(r#"{"kind":"unchecked"}"#)).caller().unwrap();
        assert!(unchecked.require(ADMIN).is_ok() && unchecked.owns("kim"));
        assert_eq!(unchecked.scope().unwrap(), None);
    }
}
