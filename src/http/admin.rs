//! The `/v1` admin API (SPEC §5), behind `Authorization: Bearer <admin_token>`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::providers::signature::constant_time_eq;
use crate::store::ListQuery;

use super::{ApiError, AppState};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.trim().as_bytes(), st.admin_token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    source: Option<String>,
    status: Option<String>,
    intent: Option<String>,
    contact: Option<String>,
    action: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

impl ListParams {
    fn into_query(self) -> Result<ListQuery, ApiError> {
        if let Some(s) = &self.status
            && !matches!(s.as_str(), "pending" | "done" | "dead")
        {
            return Err(ApiError::bad_request(
                "status must be pending, done or dead",
            ));
        }
        Ok(ListQuery {
            source: self.source,
            status: self.status,
            intent: self.intent,
            contact: self.contact,
            action: self.action,
            limit: self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
            cursor: self.cursor,
        })
    }
}

type Params = Result<Query<ListParams>, axum::extract::rejection::QueryRejection>;

fn params(p: Params) -> Result<ListQuery, ApiError> {
    p.map_err(|e| ApiError::bad_request(e.body_text()))?
        .0
        .into_query()
}

pub async fn list_messages(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    p: Params,
) -> Response {
    async move {
        authorize(&st, &headers)?;
        Ok::<_, ApiError>(Json(st.store.list_messages(params(p)?).await?))
    }
    .await
    .into_response()
}

pub async fn get_message(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    async move {
        authorize(&st, &headers)?;
        match st.store.get_message(&id).await {
            Ok(m) => Ok(Json(m)),
            Err(crate::store::StoreError::NotFound) => Err(ApiError::not_found("message")),
            Err(e) => Err(e.into()),
        }
    }
    .await
    .into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayMessage {
    #[serde(default)]
    only_failed: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayDead {
    source: Option<String>,
    action: Option<String>,
}

/// An optional JSON body: empty means defaults.
fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

pub async fn replay_message(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    async move {
        authorize(&st, &headers)?;
        let req: ReplayMessage = optional_body(&body)?;
        match st.store.replay_message(&id, req.only_failed).await {
            Ok(n) => Ok(Json(json!({"replayed": n}))),
            Err(crate::store::StoreError::NotFound) => Err(ApiError::not_found("message")),
            Err(e) => Err(e.into()),
        }
    }
    .await
    .into_response()
}

pub async fn list_dead_letters(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    p: Params,
) -> Response {
    async move {
        authorize(&st, &headers)?;
        Ok::<_, ApiError>(Json(st.store.list_dead_letters(params(p)?).await?))
    }
    .await
    .into_response()
}

pub async fn replay_dead_letters(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    async move {
        authorize(&st, &headers)?;
        let req: ReplayDead = optional_body(&body)?;
        let n = st.store.replay_dead(req.source, req.action).await?;
        Ok::<_, ApiError>(Json(json!({"replayed": n})))
    }
    .await
    .into_response()
}

pub async fn list_rejections(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    p: Params,
) -> Response {
    async move {
        authorize(&st, &headers)?;
        Ok::<_, ApiError>(Json(st.store.list_rejections(params(p)?).await?))
    }
    .await
    .into_response()
}
