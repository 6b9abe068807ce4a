//! ci-gateway: one stable, provider-agnostic CI API in front of Concourse.
//!
//! Callers list jobs, trigger runs (with an idempotency key), read them, follow their status and
//! logs over Server-Sent Events, and cancel them. They never see a provider's concept or
//! credential: a provider adapter translates.
//!
//! # Layout
//! - [`config`]: the TOML configuration, with secrets read from the environment or files.
//! - [`domain`]: provider-agnostic types (run status, ids).
//! - [`provider`]: the [`provider::CiProvider`] seam and the Concourse adapter, the only code that
//!   speaks Concourse.
//! - [`store`]: the [`store::Store`] seam over SQLite and PostgreSQL.
//! - [`runs`]: the run engine: trigger, cancel, and one ingester per unfinished run that stores
//!   its provider events.
//! - [`bus`]: wakes this process's event streams when an ingester stored something.
//! - [`http`]: routes, handlers, the JSON error shape, the SSE endpoint.
//! - [`auth`]: caller authentication (JWT, API tokens, mTLS) and scopes.
//! - [`audit`]: the hash-chained audit log of triggers and cancels, and its verifier.
//! - [`app`]: start-up and shutdown; [`dev`]: the zero-configuration dev mode.
//! - [`cli`]: the command-line client of the API (`ci-gateway jobs …`, `ci-gateway runs …`).
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod config;
pub mod dev;
pub mod domain;
pub mod http;
pub mod provider;
pub mod runs;
pub mod store;

pub use app::Application;
