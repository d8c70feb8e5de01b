//! How current the config from the API server is, and what stops counting when it is not.
//!
//! A proxy that cannot reach the API server keeps serving its last config; without a limit it
//! would do so forever, and a revoked AccessGrant would never stop working. Staleness is the
//! time since the API server last confirmed the config in force — a watch event, a relist, or a
//! periodic read of the ConfigMap ([`crate::config_map`] reads it whenever the watch has been
//! quiet for a third of the limit, so a quiet but healthy watch stays fresh) — not the time
//! since the config last changed. Past `--max-config-staleness` the proxy stops honouring
//! AccessGrants (`--stale-config=grants`) or refuses everything (`all`), says so in `/readyz`
//! and the metrics, and recovers by itself as soon as the API server answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::source::{Loaded, State};

/// What fails closed once the config is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StaleScope {
    /// AccessGrants stop counting (the rules of the StreamPolicies still apply): a grant is
    /// temporary by nature and its revocation is what must not be missed.
    Grants,
    /// Every request is refused, as when no config is loaded.
    All,
}

/// The limit: how old the config may get, and what stops when it is older.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StalenessLimit {
    /// The longest the proxy serves a config the API server has not confirmed.
    pub max: Duration,
    /// What fails closed past it.
    pub scope: StaleScope,
}

/// When the API server last confirmed the config in force. Shared by the ConfigMap watch (which
/// reports), the admin endpoint and the metrics (which read).
#[derive(Debug)]
pub struct Freshness {
    limit: StalenessLimit,
    start: Instant,
    /// Milliseconds from `start` to the last confirmation (0: none yet, counted from start).
    heard_ms: AtomicU64,
}

impl Freshness {
    /// Nothing heard yet: the config's age counts from now.
    pub fn new(limit: StalenessLimit) -> Arc<Freshness> {
        Arc::new(Freshness {
            limit,
            start: Instant::now(),
            heard_ms: AtomicU64::new(0),
        })
    }

    /// The limit in force.
    pub fn limit(&self) -> StalenessLimit {
        self.limit
    }

    /// The API server has just confirmed the config (or that there is none).
    pub fn heard(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the API server last confirmed the config.
    pub fn age(&self) -> Duration {
        let heard = Duration::from_millis(self.heard_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(heard)
    }

    /// Why the config no longer counts (in full or for its grants), or `None` while it is
    /// fresh.
    pub fn stale(&self) -> Option<String> {
        let age = self.age();
        (age > self.limit.max).then(|| {
            let what = match self.limit.scope {
                StaleScope::Grants => "AccessGrants are not honoured",
                StaleScope::All => "every request is refused",
            };
            format!(
                "the config is stale: the API server has not confirmed it for {} s (limit {} s, \
                 --max-config-staleness), so {what} until it answers again",
                age.as_secs(),
                self.limit.max.as_secs()
            )
        })
    }
}

/// Serves what the config source published, as the staleness allows: the published state while
/// fresh, a derived one while stale. Remembers what it derived so that an unchanged state is not
/// rebuilt on every tick.
pub struct Serving {
    freshness: Option<Arc<Freshness>>,
    served: Arc<arc_swap::ArcSwap<State>>,
    metrics: Arc<Metrics>,
    /// The published state the served one was made from, and whether it was stale then.
    last: Option<(Arc<State>, bool)>,
}

impl Serving {
    /// Serves into `served`; without `freshness`, exactly what is published.
    pub fn new(
        freshness: Option<Arc<Freshness>>,
        served: Arc<arc_swap::ArcSwap<State>>,
        metrics: Arc<Metrics>,
    ) -> Serving {
        Serving {
            freshness,
            served,
            metrics,
            last: None,
        }
    }

    /// Puts `published` in force, or the stale form of it. Cheap when nothing changed.
    pub fn serve(&mut self, published: Arc<State>) {
        let stale = self.freshness.as_ref().and_then(|f| f.stale());
        let is_stale = stale.is_some();
        let unchanged = matches!(&self.last, Some((last, was_stale))
            if Arc::ptr_eq(last, &published) && *was_stale == is_stale);
        if !unchanged {
            let was_stale = self.last.as_ref().is_some_and(|(_, was)| *was);
            let next = match (&stale, &self.freshness) {
                (Some(reason), Some(freshness)) => {
                    if !was_stale {
                        tracing::error!(%reason, "config stale");
                    }
                    stale_state(&published, reason, freshness.limit().scope)
                }
                _ => {
                    if was_stale {
                        tracing::info!(
                            "the API server confirmed the config again: no longer stale"
                        );
                    }
                    published.clone()
                }
            };
            self.served.store(next);
            self.last = Some((published, is_stale));
        }
        // After the store: once the metric says stale, the stale state is in force.
        if let Some(freshness) = &self.freshness {
            self.metrics.config_staleness(freshness.age(), is_stale);
        }
    }
}

/// What a stale config still allows: the config without its grants, or nothing.
fn stale_state(published: &Arc<State>, reason: &str, scope: StaleScope) -> Arc<State> {
    let State::Ready(loaded) = &**published else {
        // Failing closed already, for a reason of its own.
        return published.clone();
    };
    match scope {
        StaleScope::All => Arc::new(State::FailClosed {
            reason: reason.to_string(),
            last_good: Some(loaded.clone()),
        }),
        StaleScope::Grants => {
            let mut config = loaded.config.clone();
            config.grants.clear();
            Arc::new(State::Ready(Arc::new(Loaded {
                config,
                target_name: loaded.target_name.clone(),
                bootstrap: loaded.bootstrap.clone(),
                connector: loaded.connector.clone(),
                masking: loaded.masking.fresh_copy(),
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_stale_only_past_the_limit_and_fresh_again_once_heard() {
        let freshness = Freshness::new(StalenessLimit {
            max: Duration::from_millis(50),
            scope: StaleScope::Grants,
        });
        assert!(freshness.stale().is_none());
        std::thread::sleep(Duration::from_millis(80));
        let reason = freshness.stale().unwrap();
        assert!(reason.contains("AccessGrants are not honoured"), "{reason}");
        freshness.heard();
        assert!(freshness.stale().is_none());
        assert!(freshness.age() < Duration::from_millis(50));
    }
}
