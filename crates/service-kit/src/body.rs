//! Request bodies read up to the service's limit and refused past it with the JSON error
//! (`413 {"error":{"code":"payload_too_large",...}}`): actix's own `web::Bytes` answers an
//! oversized body in plain text ("payload reached size limit").

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;

use actix_web::dev::{Decompress, Payload};
use actix_web::error::PayloadError;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{FromRequest, HttpRequest};
use futures::{Stream, StreamExt};

use crate::config::HttpSettings;
use crate::error::ApiError;

/// The most bytes a request body may have, given to the app once with `App::app_data`
/// (`http.max_body_bytes`); without it, that setting's default.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A request's whole body, at most [`BodyLimit`] bytes.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl Deref for Body {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl FromRequest for Body {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;
    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<BodyLimit>()
            .map_or_else(|| HttpSettings::default().max_body_bytes, |l| l.0);
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // A gzip-encoded body is decoded, as actix's `web::Bytes` does; the limit applies to
        // what it decodes to.
        let payload = Decompress::from_headers(payload.take(), req.headers());
        Box::pin(async move {
            if declared.is_some_and(|n| n > limit) {
                return Err(ApiError::TooLarge(limit));
            }
            let payload = std::pin::pin!(payload);
            read(payload, limit).await.map(|b| Body(b.freeze()))
        })
    }
}

/// Reads `payload` up to `limit` bytes, refusing a larger body without buffering the rest.
pub async fn read<S>(mut payload: S, limit: usize) -> Result<BytesMut, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("body", e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
