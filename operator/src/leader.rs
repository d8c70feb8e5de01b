//! Leader election with a `coordination.k8s.io/v1` Lease, so that several replicas can run and
//! only one reconciles and writes.
//!
//! A replica takes the Lease when nobody holds it or its holder has not renewed it for
//! `leaseDurationSeconds`; every write is a replace carrying the resourceVersion read, so two
//! replicas racing for it cannot both win. The leader renews every `renew_every`; a leader that
//! cannot renew before its lease runs out stops (the process exits and its supervisor restarts
//! it as a standby), because another replica may already be writing. On shutdown the leader
//! gives the Lease up so a standby takes over at once.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, Error as KubeError};

/// Which Lease, and who we are.
#[derive(Clone, Debug)]
pub struct Election {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (its pod name, say).
    pub identity: String,
    /// How long a Lease stays held without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Another replica holds the Lease now.
    #[error("lost the Lease {namespace}/{name} to {holder}")]
    Lost {
        /// The namespace.
        namespace: String,
        /// The Lease.
        name: String,
        /// Its new holder.
        holder: String,
    },
    /// The API server could not be reached for longer than the lease lasts.
    #[error("could not renew the Lease {namespace}/{name} before it ran out: {source}")]
    Renew {
        /// The namespace.
        namespace: String,
        /// The Lease.
        name: String,
        /// The last error.
        source: KubeError,
    },
}

/// The outcome of one attempt.
enum Attempt {
    Held,
    HeldBy(String),
}

impl Election {
    fn api(&self, client: &Client) -> Api<Lease> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One try to take or renew the Lease.
    async fn attempt(&self, api: &Api<Lease>) -> Result<Attempt, KubeError> {
        let now = Timestamp::now();
        let existing = api.get_opt(&self.name).await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(KubeError::Api(status)) if status.code == 409 => {
                    Ok(Attempt::HeldBy("another replica".into()))
                }
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let duration = SignedDuration::from_secs(i64::from(
            spec.lease_duration_seconds.unwrap_or(self.seconds()),
        ));
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|MicroTime(renewed)| *renewed + duration < now);
        if !ours && !holder.is_empty() && !expired {
            return Ok(Attempt::HeldBy(holder));
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(self.seconds());
        spec.renew_time = Some(MicroTime(now));
        // `replace` sends the resourceVersion we read: if anyone wrote in between, it fails.
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(KubeError::Api(status)) if status.code == 409 => {
                Ok(Attempt::HeldBy("another replica".into()))
            }
            Err(error) => Err(error),
        }
    }

    /// Waits until this replica holds the Lease. `on_answer` is called once the API server
    /// has answered (the replica is healthy, even as a standby).
    pub async fn acquire(&self, client: &Client, mut on_answer: impl FnMut()) {
        let api = self.api(client);
        let mut logged = String::new();
        loop {
            match self.attempt(&api).await {
                Ok(Attempt::Held) => {
                    on_answer();
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    on_answer();
                    if holder != logged {
                        tracing::info!(lease = %self.name, %holder, "standing by: another replica leads");
                        logged = holder;
                    }
                }
                Err(error) => tracing::warn!(%error, lease = %self.name, "reading the Lease"),
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Renews the Lease until that fails; returns why leadership ended.
    pub async fn keep(&self, client: &Client) -> LeaderError {
        let api = self.api(client);
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_every).await;
            match self.attempt(&api).await {
                Ok(Attempt::Held) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::HeldBy(holder)) => {
                    return LeaderError::Lost {
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                        holder,
                    };
                }
                Err(source) => {
                    tracing::warn!(error = %source, lease = %self.name, "renewing the Lease");
                    // Stop writing before the lease can run out under another replica.
                    if last_renewal.elapsed() + self.renew_every >= self.lease_duration {
                        return LeaderError::Renew {
                            namespace: self.namespace.clone(),
                            name: self.name.clone(),
                            source,
                        };
                    }
                }
            }
        }
    }

    /// Gives the Lease up (best effort) so a standby need not wait for it to run out.
    pub async fn release(&self, client: &Client) {
        let api = self.api(client);
        let Ok(Some(mut lease)) = api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released the Lease"),
            Err(error) => tracing::warn!(%error, lease = %self.name, "releasing the Lease"),
        }
    }
}
