//! The Elasticsearch side: connecting (basic auth, API key, TLS), installing the index
//! template, and one `_bulk` request whose items are judged one by one.

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::Url;
use elasticsearch::indices::IndicesPutIndexTemplateParts;
use elasticsearch::{BulkOperation, BulkOperations, BulkParts, Elasticsearch};
use serde_json::Value;

use crate::config::Settings;

/// Why a call failed: the cluster may accept it later, or it refused the request for good.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EsError {
    #[error("the cluster is unavailable: {0}")]
    Unavailable(String),
    #[error("the cluster refused the request: {0}")]
    Refused(String),
}

/// How the cluster answered one document of a bulk request.
#[derive(Debug)]
pub(crate) enum ItemResult {
    Indexed,
    /// Refused for good (a mapping error): dead-letter it.
    Rejected(String),
    /// Try again later (429, 5xx).
    Retry(String),
}

pub(crate) struct Es {
    client: Elasticsearch,
    index: String,
}

impl Es {
    pub(crate) fn new(settings: &Settings) -> Result<Self, String> {
        let es = &settings.es;
        let url = Url::parse(&es.url).map_err(|e| format!("elasticsearch.url: {e}"))?;
        let mut t = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .disable_proxy()
            .timeout(settings.request_timeout);
        if let (Some(u), Some(p)) = (&es.username, &es.password) {
            t = t.auth(Credentials::Basic(u.clone(), p.expose().to_owned()));
        }
        if let Some(k) = &es.api_key {
            let (id, key) = k.expose().split_once(':').unwrap_or(("", ""));
            t = t.auth(Credentials::ApiKey(id.to_owned(), key.to_owned()));
        }
        if es.tls_insecure {
            t = t.cert_validation(CertificateValidation::None);
        } else if let Some(path) = &es.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| format!("elasticsearch.ca_cert {}: {e}", path.display()))?;
            let cert =
                Certificate::from_pem(&pem).map_err(|e| format!("elasticsearch.ca_cert: {e}"))?;
            t = t.cert_validation(CertificateValidation::Full(cert));
        }
        let transport = t
            .build()
            .map_err(|e| format!("cannot create the Elasticsearch client: {e}"))?;
        Ok(Self {
            client: Elasticsearch::new(transport),
            index: es.index.clone(),
        })
    }

    /// Whether the cluster answers.
    pub(crate) async fn ping(&self) -> bool {
        matches!(self.client.ping().send().await, Ok(r) if r.status_code().is_success())
    }

    /// Installs (or replaces) the index template with Kiln's mappings.
    pub(crate) async fn install_template(&self) -> Result<(), EsError> {
        let name = format!("{}-template", self.index);
        let r = self
            .client
            .indices()
            .put_index_template(IndicesPutIndexTemplateParts::Name(&name))
            .body(crate::document::template(&self.index))
            .send()
            .await
            .map_err(|e| EsError::Unavailable(e.to_string()))?;
        let status = r.status_code().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = r.text().await.unwrap_or_default();
        if status >= 500 || status == 429 {
            Err(EsError::Unavailable(format!("{status}: {body}")))
        } else {
            Err(EsError::Refused(format!("{status}: {body}")))
        }
    }

    /// Indexes `(index, id, document)` triples; returns one result per item, in order.
    pub(crate) async fn bulk(
        &self,
        docs: &[(String, String, Value)],
    ) -> Result<Vec<ItemResult>, EsError> {
        let mut ops = BulkOperations::new();
        for (index, id, doc) in docs {
            ops.push(
                BulkOperation::index(doc.clone())
                    .id(id.as_str())
                    .index(index.as_str()),
            )
            .map_err(|e| EsError::Refused(e.to_string()))?;
        }
        let started = std::time::Instant::now();
        let r = self
            .client
            .bulk(BulkParts::None)
            .body(vec![ops])
            .send()
            .await
            .map_err(|e| EsError::Unavailable(e.to_string()))?;
        metrics::histogram!("kiln_es_bulk_latency_seconds").record(started.elapsed().as_secs_f64());
        let status = r.status_code().as_u16();
        if status == 429 || status >= 500 {
            return Err(EsError::Unavailable(format!("bulk answered {status}")));
        }
        if !(200..300).contains(&status) {
            let body = r.text().await.unwrap_or_default();
            return Err(EsError::Refused(format!("bulk answered {status}: {body}")));
        }
        let body: Value = r
            .json()
            .await
            .map_err(|e| EsError::Unavailable(e.to_string()))?;
        let items = body["items"].as_array().cloned().unwrap_or_default();
        if items.len() != docs.len() {
            return Err(EsError::Unavailable(format!(
                "bulk answered {} items for {} documents",
                items.len(),
                docs.len()
            )));
        }
        Ok(items
            .iter()
            .map(|item| {
                let result = item
                    .as_object()
                    .and_then(|o| o.values().next())
                    .cloned()
                    .unwrap_or(Value::Null);
                let status = result["status"].as_u64().unwrap_or(0);
                match status {
                    200..=299 => ItemResult::Indexed,
                    429 | 500.. => ItemResult::Retry(result["error"].to_string()),
                    _ => ItemResult::Rejected(result["error"].to_string()),
                }
            })
            .collect())
    }
}
