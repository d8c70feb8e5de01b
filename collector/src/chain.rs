//! The record format of the store: one line per event, chained by SHA-256.
//!
//! A record is one line of JSON:
//!
//! ```text
//! {"i":<index>,"prev":"<hash of record i-1>","event":{…},"hash":"<SHA-256 of everything before ,"hash">"}
//! ```
//!
//! `hash` is always the last member and has a fixed width, so the bytes it covers (the *body*,
//! from `{` up to the comma before `"hash"`) are found without re-serialising anything: a
//! changed byte anywhere in a line changes its hash, and because every body holds the hash of
//! the record before, a removed or moved record breaks the link after it. `i` counts every
//! record the store ever held, from 0, across segments.

use sha2::{Digest, Sha256};

/// The `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_HEX: usize = 64;
/// `,"hash":"` + 64 hex digits + `"}`.
const TRAILER: usize = 9 + HASH_HEX + 2;

/// The hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Encodes the record of `event_json` (an event already serialised) at `index` after `prev`:
/// the line without its newline, and the record's hash.
pub fn encode(index: u64, prev: &str, event_json: &str) -> (String, String) {
    let mut line = String::with_capacity(event_json.len() + 160);
    line.push_str("{\"i\":");
    line.push_str(&index.to_string());
    line.push_str(",\"prev\":\"");
    line.push_str(prev);
    line.push_str("\",\"event\":");
    line.push_str(event_json);
    let hash = sha256_hex(line.as_bytes());
    line.push_str(",\"hash\":\"");
    line.push_str(&hash);
    line.push_str("\"}");
    (line, hash)
}

/// The event's bytes inside an intact record line (without its newline): exactly the JSON that
/// was given to [`encode`], so a digest of them is the digest of the event as it was stored.
pub fn event_bytes(line: &[u8]) -> Option<&[u8]> {
    const MARK: &[u8] = b",\"event\":";
    let body = line.get(..line.len().checked_sub(TRAILER)?)?;
    // The index is digits and `prev` is hex, so the first mark is the event's.
    let at = body.windows(MARK.len()).position(|w| w == MARK)?;
    body.get(at + MARK.len()..)
}

/// A line read back from a segment, checked against its own hash.
#[derive(Debug)]
pub struct Record {
    /// Its index.
    pub index: u64,
    /// The hash of the record before, as this record says.
    pub prev: String,
    /// Its hash, as stored.
    pub hash: String,
    /// The event (JSON).
    pub event: serde_json::Value,
}

/// Why a line is not an intact record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Damage {
    /// The line is not a record at all.
    #[error("not a record: {0}")]
    Malformed(String),
    /// The line parses but its bytes do not hash to the hash it carries.
    #[error("its content does not match its hash (stored {stored}, computed {computed})")]
    HashMismatch {
        /// The hash in the line.
        stored: String,
        /// The hash of the line's body.
        computed: String,
    },
}

/// A line that is not an intact record: the damage, and the record as far as it parsed (to
/// name the event that was altered).
#[derive(Debug)]
pub struct Broken {
    /// What is wrong.
    pub damage: Damage,
    /// The record, when the line parses.
    pub record: Option<Box<Record>>,
}

fn broken(damage: Damage, record: Option<Record>) -> Broken {
    Broken {
        damage,
        record: record.map(Box::new),
    }
}

#[derive(serde::Deserialize)]
struct Wire {
    i: u64,
    prev: String,
    event: serde_json::Value,
    hash: String,
}

/// Parses one line (without its newline) and checks it against its hash.
///
/// On [`Damage::HashMismatch`] the parsed record is returned too, so the caller can name the
/// event that was altered.
pub fn decode(line: &[u8]) -> Result<Record, Broken> {
    let wire: Wire = serde_json::from_slice(line)
        .map_err(|e| broken(Damage::Malformed(format!("invalid JSON ({e})")), None))?;
    let record = Record {
        index: wire.i,
        prev: wire.prev,
        hash: wire.hash,
        event: wire.event,
    };
    if line.len() < TRAILER || !line.ends_with(b"\"}") {
        return Err(broken(
            Damage::Malformed("the hash is not where it belongs".into()),
            Some(record),
        ));
    }
    let (body, trailer) = line.split_at(line.len() - TRAILER);
    let stored = &trailer[9..9 + HASH_HEX];
    if !trailer.starts_with(b",\"hash\":\"") || stored != record.hash.as_bytes() {
        return Err(broken(
            Damage::Malformed("the hash is not where it belongs".into()),
            Some(record),
        ));
    }
    let computed = sha256_hex(body);
    if computed != record.hash {
        let stored = record.hash.clone();
        return Err(broken(
            Damage::HashMismatch { stored, computed },
            Some(record),
        ));
    }
    Ok(record)
}

/// The event's bytes of a line whose content matches its hash, without parsing the line: what
/// queries read. (Whether the chain links hold is `verify`'s question, via [`decode`].)
pub fn verified_event(line: &[u8]) -> Result<&[u8], Damage> {
    let misplaced = || Damage::Malformed("the hash is not where it belongs".into());
    if line.len() < TRAILER || !line.ends_with(b"\"}") {
        return Err(misplaced());
    }
    let (body, trailer) = line.split_at(line.len() - TRAILER);
    if !trailer.starts_with(b",\"hash\":\"") {
        return Err(misplaced());
    }
    let stored = &trailer[9..9 + HASH_HEX];
    let computed = Sha256::digest(body);
    let mut expected = [0u8; 32];
    if hex::decode_to_slice(stored, &mut expected).is_err() {
        return Err(misplaced());
    }
    if computed.as_slice() != expected {
        return Err(Damage::HashMismatch {
            stored: String::from_utf8_lossy(stored).into_owned(),
            computed: hex::encode(computed),
        });
    }
    event_bytes(line).ok_or_else(|| Damage::Malformed("no event in the record".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_reads_the_event_of_an_intact_line_only() {
        let json = r#"{"id":"s:1","data":{"effect":"Deny"}}"#;
        let (line, _) = encode(3, GENESIS, json);
        assert_eq!(verified_event(line.as_bytes()), Ok(json.as_bytes()));
        let forged = line.replace("Deny", "Allo");
        assert!(matches!(
            verified_event(forged.as_bytes()),
            Err(Damage::HashMismatch { .. })
        ));
        assert!(verified_event(b"{}").is_err());
    }

    #[test]
    fn an_encoded_record_decodes_and_chains() {
        let (first, h0) = encode(0, GENESIS, r#"{"id":"s:1"}"#);
        let (second, h1) = encode(1, &h0, r#"{"id":"s:2"}"#);
        let a = decode(first.as_bytes()).unwrap();
        let b = decode(second.as_bytes()).unwrap();
        assert_eq!((a.index, a.hash.as_str()), (0, h0.as_str()));
        assert_eq!(b.prev, h0);
        assert_eq!(b.hash, h1);
        assert_eq!(b.event["id"], "s:2");
        // The line is plain JSON for any tool.
        let value: serde_json::Value = serde_json::from_str(&second).unwrap();
        assert_eq!(value["i"], 1);
    }

    #[test]
    fn the_event_bytes_of_a_record_are_the_json_it_was_given() {
        let json = r#"{"id":"s:1","data":{"x":",\"event\":"}}"#;
        let (line, _) = encode(12, GENESIS, json);
        assert_eq!(event_bytes(line.as_bytes()), Some(json.as_bytes()));
    }

    #[test]
    fn every_changed_byte_is_noticed() {
        let (line, _) = encode(7, GENESIS, r#"{"id":"s:1","data":{"x":"abc"}}"#);
        for position in 0..line.len() {
            let mut bytes = line.clone().into_bytes();
            bytes[position] ^= 0x01;
            assert!(
                decode(&bytes).is_err(),
                "a flipped bit at {position} went unnoticed"
            );
        }
    }

    #[test]
    fn an_altered_event_is_named() {
        let (line, _) = encode(3, GENESIS, r#"{"id":"s:4","data":{"effect":"Deny"}}"#);
        let forged = line.replace("Deny", "Allo");
        match decode(forged.as_bytes()) {
            Err(Broken {
                damage: Damage::HashMismatch { .. },
                record: Some(record),
            }) => {
                assert_eq!(record.event["id"], "s:4");
                assert_eq!(record.index, 3);
            }
            other => panic!("expected a hash mismatch, got {other:?}"),
        }
    }
}
