//! The one JSON error shape of every Kiln HTTP service:
//! `{"error":{"code":"...","message":"...","field":"..."}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use kiln_store::StoreError;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The path exists but not for this method; `allowed` lists the methods it takes, as
    /// the `Allow` header does.
    #[error("this path takes {allowed}")]
    MethodNotAllowed { allowed: String },
    #[error("{field}: {message}")]
    Unprocessable { field: String, message: String },
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unreadable stored document: logged with its cause, reported as 500.
    #[error("internal error")]
    Unexpected(String),
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Unprocessable { .. } => "unprocessable",
            Self::TooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unavailable(_) => "unavailable",
            Self::Unexpected(_) => "internal",
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            Self::BadRequest { field, .. } | Self::Unprocessable { field, .. } => {
                Some(field.clone())
            }
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Unexpected(cause) = self {
            tracing::error!(error.cause = %cause, "request failed");
        }
        let mut r = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized => {
                r.insert_header(("WWW-Authenticate", "Bearer"));
            }
            Self::MethodNotAllowed { allowed } => {
                r.insert_header(("Allow", allowed.as_str()));
            }
            _ => {}
        }
        r.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().into(),
                message: self.to_string(),
                field: self.field(),
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::Invalid { field, message } => Self::Unprocessable { field, message },
            StoreError::Stale(m) => Self::Conflict(m),
            StoreError::Pool(_) | StoreError::Unavailable(_) | StoreError::Redis(_) => {
                tracing::warn!(error = %e, "Redis unavailable");
                Self::Unavailable("Redis is unavailable; try again".into())
            }
            other => Self::Unexpected(other.to_string()),
        }
    }
}

/// A route a service serves: its method and its path pattern, in actix's
/// syntax (`{param}` one segment, a last `{param:.*}` the rest).
pub type Route = (&'static str, &'static str);

/// Whether `path` fits the route `pattern`, each `{param}` standing for one non-empty
/// segment and a last `{param:.*}` for the non-empty rest.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.ends_with(":.*}") => return !b.is_empty(),
            (Some(a), Some(b)) if a.starts_with('{') => {
                if b.is_empty() {
                    return false;
                }
            }
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Every service's answer to a request no route serves, in the JSON error shape (actix
/// would answer an empty 404): a path one of `routes` has, asked with another method, is
/// 405 with the methods it takes (the `Allow` header, and the message), so a client that
/// used the wrong method is told which ones work; anything else is 404.
pub fn unrouted<'a>(
    req: &HttpRequest,
    path: &str,
    routes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> ApiError {
    let mut allowed: Vec<String> = routes
        .into_iter()
        .filter(|(_, pattern)| path_matches(pattern, path))
        .map(|(method, _)| method.to_ascii_uppercase())
        .collect();
    allowed.dedup();
    if allowed.is_empty() {
        return ApiError::NotFound(format!("no route for {} {}", req.method(), req.path()));
    }
    ApiError::MethodNotAllowed {
        allowed: allowed.join(", "),
    }
}

/// The default service of a service whose routes are the shared [`crate::health::ROUTES`]
/// and its own `routes`: [`unrouted`]'s 405 or 404.
pub async fn unrouted_service(
    req: HttpRequest,
    routes: &'static [Route],
) -> Result<HttpResponse, ApiError> {
    let all = crate::health::ROUTES.iter().chain(routes).copied();
    Err(unrouted(&req, req.path(), all))
}

/// Parses a JSON body, naming the offending field on error. Bodies are read as bytes
/// first (size-limited by the server), so this is the one place JSON input is decoded.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<T, ApiError> {
    if let Some(ct) = content_type {
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // The path already ends in the unknown field's name when that is the error.
        let field = if path == "." { "body".to_owned() } else { path };
        let message = match msg.rsplit_once(" at line ") {
            Some((m, _)) => m.to_owned(),
            None => msg,
        };
        ApiError::bad_request(field, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_matches_its_pattern_segment_by_segment() {
        assert!(path_matches(
            "/ws/builds/{job}/{number}",
            "/ws/builds/app/1"
        ));
        assert!(!path_matches("/ws/builds/{job}/{number}", "/ws/builds/app"));
        assert!(!path_matches("/ws/builds/{job}/{number}", "/ws/builds//1"));
        assert!(path_matches("/a/{path:.*}", "/a/b/c"));
        assert!(!path_matches("/a/{path:.*}", "/a/"));
        assert!(!path_matches("/healthz", "/healthz/x"));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        steps: Vec<Inner>,
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<Outer>(None, br#"{"steps":[{"name":1}]}"#).unwrap_err();
        assert_eq!(e.field().as_deref(), Some("steps[0].name"));
        let e = parse_json::<Outer>(None, br#"{"steps":[],"step":1}"#).unwrap_err();
        assert_eq!(e.field().as_deref(), Some("step"));
        let e = parse_json::<Outer>(None, br#"{"steps":["#).unwrap_err();
        assert!(matches!(e, ApiError::BadRequest { .. }));
        let e = parse_json::<Outer>(Some("text/plain"), b"{}").unwrap_err();
        assert!(matches!(e, ApiError::UnsupportedMediaType));
    }
}
