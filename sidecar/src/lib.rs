//! The Streamward proxy: a Kafka-protocol sidecar that enforces the compiled policy on every
//! request. The modules follow a request's path, in one direction:
//!
//! - [`listener`]: the bootstrap listener and one per broker, which start a session per client;
//!   [`shared`]: what every connection shares (config in force, broker routes, metrics);
//! - [`session`]: one client connection, its I/O only: frames in, each request's action carried
//!   out, responses out in request order;
//! - [`frame`]: Kafka framing and the fixed request header;
//! - [`request`]: the decision for one request, without I/O: forward, answer, hold or close;
//!   [`client_auth`]: clients authenticating to the proxy (SASL PLAIN, SCRAM, OAUTHBEARER);
//! - [`policy`]: the compiled policy's answer for the current request, or fail closed;
//!   [`guardrails`]: limits on what an allowed request may ask for;
//! - [`authorize`]: which resources and operations a request touches, and refusals;
//! - [`masking`]: which records the MaskingRules cover for this client; [`mask`] rewrites them;
//! - [`upstream`]: the broker connection with the target's TLS and SASL;
//! - [`response`]: what changes in the broker's answer, with [`brokers`], [`topics`],
//!   [`versions`];
//! - [`audit`]: one event per request, spooled to disk and delivered to the collector;
//! - around the path: [`source`], where the config comes from and reloading it;
//!   [`config_map`], the operator's ConfigMap watched through the API server; [`secrets`],
//!   the credentials and keys the config names, from the operator; [`freshness`],
//!   how long an unconfirmed config still counts; [`admin`], [`metrics`].

pub mod admin;
pub mod approval;
pub mod audit;
pub mod authorize;
pub mod brokers;
pub mod client_auth;
pub mod config_map;
pub mod frame;
pub mod freshness;
pub mod guardrails;
pub mod listener;
pub mod mask;
pub mod masking;
pub mod metrics;
pub mod policy;
pub mod request;
pub mod response;
pub mod secrets;
pub mod session;
pub mod shared;
pub mod source;
pub mod topics;
pub mod upstream;
pub mod versions;
