//! The Streamward audit collector: authenticated ingest of the proxies' audit events, a
//! tamper-evident append-only store, verification, queries and alerts.
//!
//! The data path of an event, in file order: [`auth`] lets the proxy in, [`ingest`] checks the
//! batch and hands it to the [`writer`], [`store`] appends it as [`chain`]ed records and signs
//! [`checkpoint`]s, and [`alert`]s go out; [`verify`] proves the files unchanged, [`query`]
//! reads them back and [`queries`] answers them over HTTP. The handlers share the [`state`]
//! and answer failures with an [`http_error`].

pub mod access;
pub mod aggregate;
pub mod alert;
pub mod auth;
pub mod chain;
pub mod checkpoint;
pub mod forward;
pub mod http_error;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod queries;
pub mod query;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod timeline;
pub mod verify;
pub mod writer;
