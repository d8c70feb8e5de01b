//! ApiVersions: the proxy only lets a client use API versions it can read itself, so a
//! request it must inspect is never one it cannot decode.

use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use crate::authorize::streams;

/// Narrows the broker's advertised ranges to what the proxy decodes, and drops API keys it does
/// not know at all (it could not authorize them) and those in `withheld` (handled by the proxy
/// itself, such as SASL when the client does not authenticate to the proxy).
pub fn narrow(response: &mut ApiVersionsResponse, withheld: &[ApiKey]) {
    response.api_keys.retain_mut(|entry| {
        let Ok(key) = ApiKey::try_from(entry.api_key) else {
            // Read by the proxy itself (authorize::streams); other unknown keys are dropped.
            if streams::is_streams_api(entry.api_key) {
                entry.max_version = entry.max_version.min(streams::MAX_VERSION);
                return entry.min_version <= entry.max_version;
            }
            return false;
        };
        if withheld.contains(&key) {
            return false;
        }
        let ours = key.valid_versions();
        entry.min_version = entry.min_version.max(ours.min);
        entry.max_version = entry.max_version.min(ours.max).min(decodable_max(key));
        entry.min_version <= entry.max_version
    });
}

/// Advertises `keys` with the versions the proxy itself implements, replacing what the broker
/// said: for requests the proxy answers on its own (SASL when clients authenticate to it).
pub fn add_own(response: &mut ApiVersionsResponse, keys: &[ApiKey]) {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    response
        .api_keys
        .retain(|entry| !keys.iter().any(|key| *key as i16 == entry.api_key));
    for key in keys {
        let ours = key.valid_versions();
        response.api_keys.push(
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(ours.min)
                .with_max_version(ours.max.min(decodable_max(*key))),
        );
    }
    response.api_keys.sort_by_key(|entry| entry.api_key);
}

/// kafka-protocol 0.18 lists a few versions as valid that it cannot decode yet; the proxy
/// keeps clients below them.
fn decodable_max(key: ApiKey) -> i16 {
    match key {
        ApiKey::OffsetCommit | ApiKey::OffsetFetch => 9,
        ApiKey::InitProducerId => 5,
        _ => i16::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    fn entry(key: i16, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default()
            .with_api_key(key)
            .with_min_version(min)
            .with_max_version(max)
    }

    #[test]
    fn ranges_are_intersected_and_unknown_keys_dropped() {
        let produce_max = ApiKey::Produce.valid_versions().max;
        let mut response = ApiVersionsResponse::default().with_api_keys(vec![
            entry(ApiKey::Produce as i16, 3, produce_max + 5),
            entry(ApiKey::Metadata as i16, 0, 1),
            entry(ApiKey::SaslHandshake as i16, 0, 1),
            entry(streams::HEARTBEAT, 0, 1),
            entry(4242, 0, 3),
        ]);
        narrow(&mut response, &[ApiKey::SaslHandshake]);
        let keys: Vec<(i16, i16, i16)> = response
            .api_keys
            .iter()
            .map(|e| (e.api_key, e.min_version, e.max_version))
            .collect();
        assert_eq!(
            keys,
            vec![
                (ApiKey::Produce as i16, 3, produce_max),
                (ApiKey::Metadata as i16, 0, 1),
                (streams::HEARTBEAT, 0, 0)
            ]
        );
    }

    #[test]
    fn the_proxys_own_sasl_versions_replace_the_brokers() {
        let mut response = ApiVersionsResponse::default().with_api_keys(vec![
            entry(ApiKey::SaslAuthenticate as i16, 0, 1),
            entry(ApiKey::Produce as i16, 3, 9),
        ]);
        narrow(
            &mut response,
            &[ApiKey::SaslHandshake, ApiKey::SaslAuthenticate],
        );
        add_own(
            &mut response,
            &[ApiKey::SaslHandshake, ApiKey::SaslAuthenticate],
        );
        let keys: Vec<(i16, i16, i16)> = response
            .api_keys
            .iter()
            .map(|e| (e.api_key, e.min_version, e.max_version))
            .collect();
        assert_eq!(
            keys,
            vec![
                (ApiKey::Produce as i16, 3, 9),
                (ApiKey::SaslHandshake as i16, 0, 1),
                (ApiKey::SaslAuthenticate as i16, 0, 2),
            ]
        );
    }

    #[test]
    fn a_range_the_proxy_cannot_meet_removes_the_key() {
        let ours = ApiKey::Fetch.valid_versions();
        let mut response = ApiVersionsResponse::default().with_api_keys(vec![entry(
            ApiKey::Fetch as i16,
            ours.max + 1,
            ours.max + 3,
        )]);
        narrow(&mut response, &[]);
        assert!(response.api_keys.is_empty());
    }
}
