//! Query strings parsed into the JSON error shape: actix's own `web::Query` answers a bad
//! parameter with a plain-text 400 that names no parameter (`?from=x`: "Query deserialize
//! error: invalid digit found in string"); this one answers
//! `{"error":{"code":"bad_request","field":"from",...}}` like every other bad input.

use std::future::{ready, Ready};
use std::ops::Deref;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A handler's query parameters, `T` deserialized from the query string.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(parse_query(req.query_string()).map(Query))
    }
}

/// Parses `query` (without its `?`), naming the offending parameter on error.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "query".to_owned()
        } else {
            path
        };
        ApiError::bad_request(field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Page {
        #[serde(default)]
        offset: u64,
        limit: Option<u32>,
        format: Option<String>,
    }

    fn field(e: ApiError) -> Option<String> {
        match e {
            ApiError::BadRequest { field, .. } => Some(field),
            _ => None,
        }
    }

    #[test]
    fn a_bad_parameter_is_named() {
        let e = parse_query::<Page>("offset=10&limit=-1").expect_err("negative limit");
        assert_eq!(field(e).as_deref(), Some("limit"));
        let e = parse_query::<Page>("offset=x").expect_err("offset not a number");
        assert_eq!(field(e).as_deref(), Some("offset"));
    }

    #[test]
    fn good_parameters_parse_and_absent_ones_default() {
        let p: Page = parse_query("limit=5&format=jsonl&other=1").expect("parses");
        assert_eq!(
            (p.offset, p.limit, p.format.as_deref()),
            (0, Some(5), Some("jsonl"))
        );
        let p: Page = parse_query("").expect("empty query");
        assert_eq!((p.offset, p.limit), (0, None));
        let p: Page = parse_query("format=a%20b").expect("percent-decoded");
        assert_eq!(p.format.as_deref(), Some("a b"));
    }
}
