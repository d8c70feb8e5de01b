//! Who may read the audit trail: a caller with a static query token (automation), or a
//! Kubernetes user whose RBAC allows `list` on `auditevents.streamward.io`.
//!
//! A user's bearer token is authenticated with a TokenReview for the API server's own
//! audiences (the token `kubectl` sends), then a SubjectAccessReview asks whether that user,
//! with its groups and extra attributes, may `list` the resource `auditevents` of the group
//! `streamward.io`: cluster-wide, or in the one namespace a query is limited to (a RoleBinding
//! there lets a team read its own namespace's trail). Nothing is cached, so a revoked binding
//! or token takes effect on the next query.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use sha2::{Digest, Sha256};
use streamward_api::audit::Reader;

use crate::auth::{TokenFile, bearer};

/// The API group of the resource that stands for the audit trail in RBAC.
pub const GROUP: &str = "streamward.io";
/// The resource that stands for the audit trail in RBAC.
pub const RESOURCE: &str = "auditevents";
/// The verb a query needs.
pub const VERB: &str = "list";
/// The ClusterRole the chart ships that grants it (with the release name `streamward`).
pub const READER_ROLE: &str = "streamward-audit-reader";

/// What a query reads: everything, or one namespace's events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (and the collector's own records).
    Cluster,
    /// Only events of workloads in this namespace (the query filters on it).
    Namespace(String),
}

impl Scope {
    fn describe(&self) -> String {
        match self {
            Scope::Cluster => "cluster-wide".into(),
            Scope::Namespace(namespace) => format!("in namespace {namespace}"),
        }
    }
}

/// Why a reader was not let in.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No token, or one nobody vouches for (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but RBAC does not allow it (403, and audited).
    #[error("{message}")]
    Forbidden {
        /// Who was refused.
        reader: Box<Reader>,
        /// What they lack.
        message: String,
    },
    /// The query API is off (403).
    #[error("{0}")]
    Off(String),
    /// The API server could not be asked (503).
    #[error("{0}")]
    Unavailable(String),
}

/// How the query API lets readers in; both ways may be on.
pub struct QueryAccess {
    /// Static query tokens (`--query-token-file`).
    pub tokens: Option<TokenFile>,
    /// Kubernetes users authorized by RBAC (`--query-authorization kubernetes`).
    pub kubernetes: Option<kube::Client>,
    /// The ClusterRole that grants reading, named in refusals (`--query-reader-role`).
    pub reader_role: String,
}

impl Default for QueryAccess {
    fn default() -> QueryAccess {
        QueryAccess {
            tokens: None,
            kubernetes: None,
            reader_role: READER_ROLE.into(),
        }
    }
}

impl QueryAccess {
    /// Whether any way in is configured.
    pub fn is_on(&self) -> bool {
        self.tokens.is_some() || self.kubernetes.is_some()
    }

    /// Lets in the caller of `authorization` (the header's value) to read `scope`, or says why
    /// not.
    pub async fn admit(
        &self,
        authorization: Option<&str>,
        scope: &Scope,
    ) -> Result<Reader, Refused> {
        if !self.is_on() {
            return Err(Refused::Off(
                "the query API is off: start the collector with --query-authorization \
                 kubernetes or --query-token-file"
                    .into(),
            ));
        }
        let Some(token) = bearer(authorization) else {
            return Err(Refused::Unauthenticated(
                "a bearer token is required (Authorization: Bearer <token>): your Kubernetes \
                 token, or a query token"
                    .into(),
            ));
        };
        if let Some(tokens) = &self.tokens
            && tokens.contains(token)
        {
            return Ok(Reader {
                user: format!("query-token:{}", fingerprint(token)),
                uid: None,
                groups: Vec::new(),
                authenticated_by: "QueryToken".into(),
            });
        }
        let Some(client) = &self.kubernetes else {
            return Err(Refused::Unauthenticated(
                "the token is not a query token (this collector authorizes no Kubernetes users)"
                    .into(),
            ));
        };
        let (reader, extra) = review_token(client, token).await?;
        authorize(client, reader, extra, scope, &self.reader_role).await
    }
}

/// The first 16 hex digits of the token's SHA-256: names a query token in the audit trail
/// without revealing it.
fn fingerprint(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..8])
}

type Extra = BTreeMap<String, Vec<String>>;

async fn review_token(client: &kube::Client, token: &str) -> Result<(Reader, Extra), Refused> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            // The API server's own audiences: the token kubectl sends to it.
            audiences: None,
        },
        ..TokenReview::default()
    };
    let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
    let reviewed = api
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|e| Refused::Unavailable(format!("TokenReview failed: {e}")))?;
    let status = reviewed.status.unwrap_or_default();
    let user = status.user.unwrap_or_default();
    let name = user.username.unwrap_or_default();
    if status.authenticated != Some(true) || name.is_empty() {
        return Err(Refused::Unauthenticated(format!(
            "the Kubernetes API server did not authenticate the token{}",
            status.error.map(|e| format!(": {e}")).unwrap_or_default()
        )));
    }
    let reader = Reader {
        user: name,
        uid: user.uid,
        groups: user.groups.unwrap_or_default(),
        authenticated_by: "TokenReview".into(),
    };
    Ok((reader, user.extra.unwrap_or_default()))
}

async fn authorize(
    client: &kube::Client,
    reader: Reader,
    extra: Extra,
    scope: &Scope,
    role: &str,
) -> Result<Reader, Refused> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(reader.user.clone()),
            uid: reader.uid.clone(),
            groups: Some(reader.groups.clone()),
            extra: (!extra.is_empty()).then_some(extra),
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                resource: Some(RESOURCE.into()),
                verb: Some(VERB.into()),
                namespace: match scope {
                    Scope::Cluster => None,
                    Scope::Namespace(namespace) => Some(namespace.clone()),
                },
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: kube::Api<SubjectAccessReview> = kube::Api::all(client.clone());
    let reviewed = api
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|e| Refused::Unavailable(format!("SubjectAccessReview failed: {e}")))?;
    let status = reviewed.status.unwrap_or_default();
    if status.allowed {
        return Ok(reader);
    }
    let groups = if reader.groups.is_empty() {
        String::new()
    } else {
        format!(" (groups {})", reader.groups.join(", "))
    };
    let namespaced = match scope {
        Scope::Cluster => String::new(),
        Scope::Namespace(namespace) => format!(" or a RoleBinding to it in {namespace}"),
    };
    let message = format!(
        "user {:?}{groups} may not read the audit trail: it needs {VERB} on \
         {RESOURCE}.{GROUP} {} (a ClusterRoleBinding to the ClusterRole {role}{namespaced}){}",
        reader.user,
        scope.describe(),
        status
            .reason
            .filter(|r| !r.is_empty())
            .map(|r| format!("; the API server says: {r}"))
            .unwrap_or_default()
    );
    Err(Refused::Forbidden {
        reader: Box::new(reader),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_way_in_the_query_api_is_off() {
        let access = QueryAccess::default();
        assert!(matches!(
            access.admit(Some("Bearer x"), &Scope::Cluster).await,
            Err(Refused::Off(_))
        ));
    }

    #[tokio::test]
    async fn a_query_token_reads_under_its_fingerprint() {
        let access = QueryAccess {
            tokens: Some(TokenFile::parse("query-token-0123456789\n").unwrap()),
            ..QueryAccess::default()
        };
        let reader = access
            .admit(Some("Bearer query-token-0123456789"), &Scope::Cluster)
            .await
            .unwrap();
        assert_eq!(reader.authenticated_by, "QueryToken");
        assert!(reader.user.starts_with("query-token:"));
        assert!(!reader.user.contains("0123456789"));
        assert!(matches!(
            access
                .admit(Some("Bearer other-token-0123456789"), &Scope::Cluster)
                .await,
            Err(Refused::Unauthenticated(_))
        ));
        assert!(matches!(
            access.admit(None, &Scope::Cluster).await,
            Err(Refused::Unauthenticated(_))
        ));
    }
}
