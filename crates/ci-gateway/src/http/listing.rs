//! `GET /v1/runs`: the runs of the tenant, newest first, filtered and paged.
//!
//! Paging is by keyset, not offset: the opaque cursor names the last run of a page (its creation
//! time and id), and the next page starts strictly after it in the order (created_at DESC,
//! run_id DESC). Runs created meanwhile sort before the cursor, so they never shift a later page:
//! every run that existed when the listing started appears exactly once.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::views::{ErrorBody, RunList, RunView};
use crate::auth::{Caller, Scope};
use crate::domain::{RunId, RunStatus};
use crate::store::RunFilter;

/// Runs per page without `limit`.
pub const DEFAULT_LIMIT: u32 = 50;

/// The largest `limit`.
pub const MAX_LIMIT: u32 = 200;

/// The query of `GET /v1/runs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListRunsQuery {
    /// Only this job's runs.
    job_id: Option<String>,
    /// Only runs in this status.
    #[param(value_type = Option<RunStatus>)]
    status: Option<String>,
    /// Only runs created at or after this instant (RFC 3339, e.g. `2026-12-03T10:00:00Z`).
    #[param(format = DateTime)]
    created_after: Option<String>,
    /// Only runs created before this instant (RFC 3339).
    #[param(format = DateTime)]
    created_before: Option<String>,
    /// Runs per page, 1 to 200; default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page; the other parameters must stay the same.
    cursor: Option<String>,
}

/// A position in the listing: the last run of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Its creation time, exactly as stored.
    pub created_at: OffsetDateTime,
    /// Its id.
    pub run_id: RunId,
}

impl Cursor {
    /// The opaque form: base64url (no padding) of `<created_at RFC 3339>|<run_id>`.
    pub fn encode(&self) -> String {
        let at = self.created_at.format(&Rfc3339).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(format!("{at}|{}", self.run_id))
    }

    /// Reads the opaque form.
    ///
    /// # Errors
    /// `invalid_request` when it is not a cursor this gateway made.
    pub fn decode(s: &str) -> Result<Cursor, ApiError> {
        let bad = || ApiError::InvalidRequest("cursor is not a valid cursor".to_owned());
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (at, id) = text.split_once('|').ok_or_else(bad)?;
        Ok(Cursor {
            created_at: OffsetDateTime::parse(at, &Rfc3339).map_err(|_| bad())?,
            run_id: RunId::parse(id).map_err(|_| bad())?,
        })
    }
}

fn parse_time(name: &str, value: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|_| {
        ApiError::InvalidRequest(format!(
            "{name} must be an RFC 3339 timestamp like 2026-12-03T10:00:00Z"
        ))
    })
}

fn parse_limit(value: Option<&str>) -> Result<u32, ApiError> {
    let Some(value) = value else {
        return Ok(DEFAULT_LIMIT);
    };
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
        })
}

/// The filter a query asks for, and its page size.
fn parse(query: ListRunsQuery) -> Result<(RunFilter, u32), ApiError> {
    let status = query
        .status
        .map(|s| {
            RunStatus::parse(&s).ok_or_else(|| {
                let all: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::InvalidRequest(format!("status must be one of {}", all.join(", ")))
            })
        })
        .transpose()?;
    let filter = RunFilter {
        job_id: query.job_id,
        job_ids: None,
        status,
        created_after: query
            .created_after
            .map(|t| parse_time("created_after", &t))
            .transpose()?,
        created_before: query
            .created_before
            .map(|t| parse_time("created_before", &t))
            .transpose()?,
        after: query
            .cursor
            .map(|c| Cursor::decode(&c).map(|c| (c.created_at, c.run_id)))
            .transpose()?,
    };
    Ok((filter, parse_limit(query.limit.as_deref())?))
}

/// `GET /v1/runs`.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    summary = "List runs, newest first",
    description = "Filters combine. Page with `next_cursor` until it is null; a listing stays \
        correct while runs are created (they sort before the cursor and never shift later \
        pages). Creation times compare to the millisecond at least.",
    params(ListRunsQuery),
    responses(
        (status = 200, description = "One page of runs.", body = RunList),
        (status = 400, description = "`invalid_request`: a bad status, timestamp, limit or cursor, or an unknown query parameter.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad credentials.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller lacks the scope `runs:read`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(caller))]
pub async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListRunsQuery>, QueryRejection>,
) -> Result<Json<RunList>, ApiError> {
    caller.record_in_span();
    caller.require(Scope::RunsRead)?;
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let (mut filter, limit) = parse(query)?;
    if caller.grant.projects.is_some() {
        // A caller limited to some projects sees only their runs: filtered in the query, so
        // that pages and cursors never name, count or skip over anybody else's.
        let jobs = state.runs.store.list_jobs(&caller.tenant).await?;
        filter.job_ids = Some(
            jobs.into_iter()
                .filter(|j| caller.may_access(&j.project))
                .map(|j| j.job_id)
                .collect(),
        );
    }
    // One more than asked tells whether there is a next page.
    let mut runs = state
        .runs
        .store
        .list_runs(&caller.tenant, &filter, i64::from(limit) + 1)
        .await?;
    let more = runs.len() > limit as usize;
    runs.truncate(limit as usize);
    let next_after = runs.last().map(|last| Cursor {
        created_at: last.created_at,
        run_id: last.run_id,
    });
    let next_cursor = next_after.filter(|_| more).map(|c| c.encode());
    Ok(Json(RunList {
        runs: runs.iter().map(RunView::from).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let c = Cursor {
            created_at: OffsetDateTime::now_utc(),
            run_id: RunId::generate(),
        };
        assert_eq!(Cursor::decode(&c.encode()).ok(), Some(c));
        for bad in [
            "",
            "!!",
            "bm90IGEgY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("x|run_1"),
        ] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_outside_1_to_200_are_refused() {
        assert_eq!(parse_limit(None).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("200")).ok(), Some(200));
        for bad in ["0", "201", "-1", "ten", ""] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
