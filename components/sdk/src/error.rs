//! The one error type of the components' HTTP handlers.

use crate::db;
use crate::http::Response;

/// Why a handler answers something other than its result: the client's
/// mistake or a state that refuses the request (the answer is given as is:
/// 4xx, or a 503 that says to retry), or a failure inside the component
/// (500, so that the host rolls the invocation's transaction back).
#[derive(Debug)]
pub enum Error {
    Answer(Response),
    Internal(String),
}

impl Error {
    pub fn into_response(self) -> Response {
        match self {
            Error::Answer(response) => response,
            Error::Internal(message) => Response::internal(&message),
        }
    }
}

impl From<Response> for Error {
    fn from(response: Response) -> Error {
        Error::Answer(response)
    }
}

impl From<db::Error> for Error {
    fn from(err: db::Error) -> Error {
        Error::Internal(err.to_string())
    }
}
