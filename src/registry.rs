//! The Confluent-compatible schema registry, as the decoder (schemas by id)
//! and the notice producer (registering the notice schema) use it: one HTTP
//! client, one way to authenticate, one error vocabulary.

use std::time::Duration;

use serde_json::Value;

use crate::config::SchemaSources;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// What asking the registry can end in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegistryError {
    /// 404: the id or subject does not exist (permanent).
    #[error("not found (404)")]
    NotFound,
    /// Not reachable, timed out, or a 5xx/unexpected status (retry).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// It answered, but not what the API promises (permanent).
    #[error("unexpected answer: {0}")]
    Malformed(String),
}

pub(crate) struct Registry {
    base: String,
    username: Option<String>,
    password: Option<String>,
    http: reqwest::Client,
}

impl Registry {
    /// The registry `[avro]` names, if any.
    pub(crate) fn from_sources(sources: &SchemaSources) -> Result<Option<Registry>, reqwest::Error> {
        let Some(url) = &sources.registry_url else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .timeout(sources.timeout.max(Duration::from_millis(100)))
            .build()?;
        Ok(Some(Registry {
            base: url.trim_end_matches('/').to_owned(),
            username: sources.username.clone(),
            password: sources.password.clone(),
            http,
        }))
    }

    fn authenticated(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.username {
            Some(user) => request.basic_auth(user, self.password.as_deref()),
            None => request,
        }
    }

    /// Sends a request and reads its JSON body; the URL (which may carry
    /// credentials) is kept out of error messages.
    async fn json(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value, RegistryError> {
        let response = self
            .authenticated(request)
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound);
        }
        if !status.is_success() {
            return Err(RegistryError::Unavailable(format!("{what} answered {status}")));
        }
        response
            .json()
            .await
            .map_err(|e| RegistryError::Unavailable(e.without_url().to_string()))
    }

    /// `GET /schemas/ids/{id}`: the schema text.
    pub(crate) async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let request = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.base))
            .header("Accept", format!("{CONTENT_TYPE}, application/json"));
        match self
            .json(request, &format!("GET /schemas/ids/{id}"))
            .await?
            .get("schema")
        {
            Some(Value::String(text)) => Ok(text.clone()),
            _ => Err(RegistryError::Malformed(
                "the registry answer has no \"schema\" string".into(),
            )),
        }
    }

    /// `POST /subjects/{subject}/versions`: the id, the same one for an
    /// unchanged schema.
    pub(crate) async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let request = self
            .http
            .post(format!("{}/subjects/{subject}/versions", self.base))
            .header("Content-Type", CONTENT_TYPE)
            .json(&serde_json::json!({ "schema": schema }));
        let body = self
            .json(request, &format!("POST /subjects/{subject}/versions"))
            .await?;
        body.get("id")
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| RegistryError::Malformed(format!("no schema id in the answer: {body}")))
    }
}
