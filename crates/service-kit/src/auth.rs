//! Bearer-token auth: tokens and their roles come from config; each route demands a role.
//! Token comparison is constant-time, and tokens never appear in logs or responses.

use std::fmt;
use std::future::{ready, Ready};
use std::str::FromStr;
use std::sync::Arc;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::AuthSettings;
use crate::error::ApiError;

/// What a token may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?} (read, write or admin)")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        })
    }
}

/// Who made the request: the token's configured name, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The folders a write token is limited to (`auth.tokens[].folders`); empty: none.
    pub folders: Arc<[String]>,
}

impl Principal {
    /// Whether the token may change only what is inside some folders.
    pub fn is_limited(&self) -> bool {
        !self.folders.is_empty()
    }
}

/// The configured tokens, shared as actix app data.
#[derive(Clone)]
pub struct Authenticator {
    disabled: bool,
    tokens: Arc<Vec<(Vec<u8>, Principal)>>,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            disabled: settings.disabled,
            tokens: Arc::new(
                settings
                    .tokens
                    .iter()
                    .map(|t| {
                        (
                            t.token.expose().as_bytes().to_vec(),
                            Principal {
                                name: t.name.clone(),
                                role: t.role,
                                folders: t.folders.clone().into(),
                            },
                        )
                    })
                    .collect(),
            ),
        }
    }

    /// Checks a presented token against every configured one without an early exit, so
    /// the time taken says nothing about which token nearly matched.
    pub fn check(&self, presented: Option<&str>, needed: Role) -> Result<Principal, ApiError> {
        if self.disabled {
            return Ok(Principal {
                name: "anonymous".into(),
                role: Role::Admin,
                folders: Arc::from([]),
            });
        }
        let presented = presented.ok_or(ApiError::Unauthorized)?;
        let mut found: Option<&Principal> = None;
        for (t, p) in self.tokens.iter() {
            if bool::from(t.as_slice().ct_eq(presented.as_bytes())) {
                found = Some(p);
            }
        }
        let p = found.ok_or(ApiError::Unauthorized)?;
        if p.role < needed {
            return Err(ApiError::Forbidden(format!(
                "this token has the {} role; {needed} is needed",
                p.role
            )));
        }
        Ok(p.clone())
    }

    /// The token of a request: `Authorization: Bearer <token>`, or, when `allow_query` (for
    /// browsers' WebSockets, which cannot set headers), `?access_token=`.
    pub fn token_of(req: &HttpRequest, allow_query: bool) -> Option<String> {
        if let Some(h) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
            return h
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_owned());
        }
        if allow_query {
            return web::Query::<std::collections::HashMap<String, String>>::from_query(
                req.query_string(),
            )
            .ok()
            .and_then(|q| q.get("access_token").cloned());
        }
        None
    }
}

fn extract(req: &HttpRequest, role: Role) -> Result<Principal, ApiError> {
    let auth = req
        .app_data::<web::Data<Authenticator>>()
        .ok_or_else(|| ApiError::Unexpected("authenticator not configured".into()))?;
    auth.check(Authenticator::token_of(req, false).as_deref(), role)
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name(pub Principal);

        impl FromRequest for $name {
            type Error = ApiError;
            type Future = Ready<Result<Self, ApiError>>;
            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                ready(extract(req, $role).map($name))
            }
        }
    };
}

role_extractor!(Reader, Role::Read, "A request whose token may read.");
role_extractor!(
    Writer,
    Role::Write,
    "A request whose token may change things."
);
role_extractor!(
    Admin,
    Role::Admin,
    "A request whose token may read raw Redis keys."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, TokenSettings};

    fn auth() -> Authenticator {
        Authenticator::new(&AuthSettings {
            disabled: false,
            tokens: vec![TokenSettings {
                name: "viewer".into(),
                role: Role::Read,
                token: Secret::new("read-token-0123456789"),
                folders: Vec::new(),
            }],
        })
    }

    #[test]
    fn roles_gate_requests() {
        let a = auth();
        assert_eq!(
            a.check(Some("read-token-0123456789"), Role::Read)
                .unwrap()
                .name,
            "viewer"
        );
        assert!(matches!(
            a.check(Some("read-token-0123456789"), Role::Write),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            a.check(Some("nope"), Role::Read),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            a.check(None, Role::Read),
            Err(ApiError::Unauthorized)
        ));
    }
}
