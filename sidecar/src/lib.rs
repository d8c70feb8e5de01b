//! The Streamward proxy: a Kafka-protocol sidecar that enforces the compiled policy on every
//! request. The modules follow a request's path:
//!
//! - [`listener`]: the bootstrap listener and one per broker; [`shared`]: what connections share;
//! - [`session`]: one client connection, requests in and responses out, in order;
//! - [`client_auth`]: clients authenticating to the proxy (SASL PLAIN, SCRAM, OAUTHBEARER);
//! - [`frame`]: Kafka framing and the fixed request header;
//! - [`authorize`]: which resources and operations a request touches, and refusals;
//! - [`policy`]: the compiled policy's answer for the current request, or fail closed;
//!   [`guardrails`]: limits on what an allowed request may ask for;
//! - [`masking`]: which records the MaskingRules cover for this client; [`mask`] rewrites them;
//! - [`upstream`]: the broker connection with the target's TLS and SASL;
//! - [`brokers`], [`topics`], [`versions`]: what responses need fixing;
//! - [`source`]: where the config comes from and reloading it; [`config_map`]: the operator's
//!   ConfigMap watched through the API server; [`admin`], [`metrics`];
//! - [`audit`]: one event per request, spooled to disk and delivered to the collector.

pub mod admin;
pub mod audit;
pub mod authorize;
pub mod brokers;
pub mod client_auth;
pub mod config_map;
pub mod frame;
pub mod guardrails;
pub mod listener;
pub mod mask;
pub mod masking;
pub mod metrics;
pub mod policy;
pub mod request;
pub mod response;
pub mod session;
pub mod shared;
pub mod source;
pub mod topics;
pub mod upstream;
pub mod versions;
