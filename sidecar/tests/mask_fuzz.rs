//! A fuzzer for decode → mask → encode of record batches, run for a bounded time.
//!
//! The masking engine reads record sets a peer sent (a client's Produce, a broker's Fetch
//! answer), so it must never panic, and what it returns must be either an error (the proxy
//! refuses the partition) or a valid record set with every sensitive value masked. cargo-fuzz
//! needs a nightly toolchain, which CI does not have; this is a mutation fuzzer of our own on
//! stable Rust that runs inside `just test`:
//!
//! - seeds: valid record sets in every codec (several batches, headers, null values, JSON with
//!   personal data, text, control and transactional batches), built with kafka-protocol;
//! - mutations, stacked at random: bit flips, interesting bytes, truncation, the length and
//!   record-count fields, splices of two seeds, and — so mutations reach the record decoder
//!   inside compressed batches — rewrites of the decompressed records followed by
//!   recompression, with the batch CRC fixed up (or not);
//! - oracles: no panic; an output decodes with kafka-protocol's decoder (which checks CRCs),
//!   keeps the input's offsets when the input was readable, masks again without error, and no
//!   data record value of a plan with an Email detector still holds the seeds' address.
//!
//! `STREAMWARD_FUZZ_SECONDS` (default 10) bounds the run, `STREAMWARD_FUZZ_SEED` replays one; a
//! failure prints the seed and the input in hex. `just fuzz-mask 300` runs longer, in release.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use streamward_api::compile::{compile, parse_manifests};
use streamward_api::config::{Flow, SecretKeyRef, WorkloadIdentity};
use streamward_sidecar::mask::{MaskStats, MaskingKeys, MaskingPlan, mask_batch};

/// The address every seed carries; no output of a plan with an Email detector may hold it.
const MARKER: &str = "leak.me@example.com";
const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];
const HEADER_LEN: usize = 61;

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

struct FuzzPlan {
    name: &'static str,
    plan: MaskingPlan,
    /// Whether every value holding an email address must come out masked.
    masks_emails: bool,
}

fn plans() -> Vec<FuzzPlan> {
    let specs: [(&str, &str, bool); 4] = [
        (
            "json",
            "  fields: [{path: email}, {path: 'card.number', strategy: {type: KeepLast, count: 4}}, {path: '..secret[*]'}]
  detectors: [{type: Email}, {type: CreditCard}, {type: Jwt}]
  headers: [{name: x-user}, {name: x-card, strategy: {type: KeepFirst, count: 2}}]",
            true,
        ),
        (
            "keyed",
            "  fields: [{path: email, strategy: {type: Hmac, keySecretRef: {name: k, key: k}}}, {path: phone, strategy: {type: FormatPreserving, keySecretRef: {name: k, key: k}}}]
  headers: [{name: x-user, strategy: {type: Hmac, keySecretRef: {name: k, key: k}, encoding: Base64Url}}]
  onParseError: Pass",
            false,
        ),
        (
            "text",
            "  format: Text
  detectors: [{type: Email}, {type: CreditCard}, {type: Phone}, {type: Iban}, {type: UsSsn}, {type: Jwt}, {type: CloudAccessKey}, {type: Regex, pattern: 'order-[0-9]+'}]",
            true,
        ),
        (
            "binary",
            "  format: Binary\n  binary: Redact",
            true,
        ),
    ];
    let identity = WorkloadIdentity {
        namespace: "demo".into(),
        service_account: "app".into(),
    };
    let mut keys = MaskingKeys::new();
    keys.insert(
        SecretKeyRef {
            name: "k".into(),
            key: "k".into(),
        },
        b"a fuzzing key that is long enough".to_vec(),
    );
    let mut plans = Vec::new();
    for (name, spec, masks_emails) in specs {
        let yaml = format!(
            "apiVersion: streamward.io/v1alpha1\nkind: MaskingRule\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  topics: [{{name: orders}}]\n  direction: Both\n{spec}\n"
        );
        let config = compile(&parse_manifests(&yaml).unwrap(), &identity)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for flow in [Flow::Consume, Flow::Produce] {
            let plan = MaskingPlan::new(&config.masking, flow, &keys).unwrap();
            // A small limit so decompression bombs are cheap to find.
            let plan = plan.with_max_decompressed_bytes(1 << 20);
            plans.push(FuzzPlan {
                name,
                plan,
                masks_emails,
            });
        }
    }
    plans
}

fn values(rng: &mut Rng) -> Option<Bytes> {
    let i = rng.below(1000);
    let value = match rng.below(8) {
        0 => return None,
        1 => format!("order-{i} shipped to {MARKER}, card 4111 1111 1111 1111"),
        2 => format!(
            r#"{{"id":{i},"email":"{MARKER}","card":{{"number":"4111111111111111"}},"phone":"+1 202 555 0{i:03}","note":"mail {MARKER}"}}"#
        ),
        3 => format!(
            r#"[{{"secret":["{MARKER}",{i},null,true]}},{{"nested":{{"deeper":{{"secret":[1.5e3,"x"]}}}}}},"{MARKER}"]"#
        ),
        4 => format!(
            "{{\n  \"email\" : \"{MARKER}\" ,\n  \"esc\": \"\\u0041\\n\\\"{i}\\\"\",\n  \"jwt\": \"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl\"\n}}"
        ),
        5 => String::from_utf8_lossy(&[0xff, 0x00, 0x81, b'{', b'"']).into_owned() + MARKER,
        6 => format!(r#""{MARKER}""#),
        _ => format!(r#"{{"email":null,"n":-0.{i}e-7,"list":[],"obj":{{}}}}"#),
    };
    Some(Bytes::from(value))
}

fn seed_records(rng: &mut Rng, base: i64, transactional: bool) -> Vec<Record> {
    (0..1 + rng.below(6))
        .map(|i| {
            let mut headers = IndexMap::new();
            if rng.chance(2) {
                headers.insert(
                    StrBytes::from_static_str("x-user"),
                    Some(Bytes::from_static(MARKER.as_bytes())),
                );
            }
            if rng.chance(3) {
                headers.insert(
                    StrBytes::from_static_str("x-card"),
                    Some(Bytes::from_static(b"4111111111111111")),
                );
            }
            if rng.chance(4) {
                headers.insert(StrBytes::from_static_str("trace"), None);
            }
            Record {
                transactional,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 3,
                producer_id: if transactional { 77 } else { -1 },
                producer_epoch: if transactional { 1 } else { -1 },
                timestamp_type: if rng.chance(4) {
                    TimestampType::LogAppend
                } else {
                    TimestampType::Creation
                },
                offset: base + i as i64,
                sequence: if transactional { i as i32 } else { -1 },
                timestamp: 1_700_000_000_000 + i as i64 * 7,
                key: rng.chance(2).then(|| Bytes::from(format!("key-{i}"))),
                value: values(rng),
                headers,
            }
        })
        .collect()
}

fn encode(records: &[Record], compression: Compression) -> BytesMut {
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    out
}

/// A control batch (a transaction marker), as a broker writes it.
fn control_batch(base: i64) -> BytesMut {
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: 3,
        producer_id: 77,
        producer_epoch: 1,
        timestamp_type: TimestampType::Creation,
        offset: base,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: Some(Bytes::from_static(&[0, 0, 0, 1])),
        value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
        headers: IndexMap::new(),
    };
    encode(&[record], Compression::None)
}

/// A record set of one to three batches in random codecs.
fn seed(rng: &mut Rng) -> BytesMut {
    let mut out = BytesMut::new();
    let mut base = rng.below(1 << 20) as i64;
    for _ in 0..1 + rng.below(3) {
        if rng.chance(6) {
            out.extend_from_slice(&control_batch(base));
            base += 1;
            continue;
        }
        let transactional = rng.chance(5);
        let records = seed_records(rng, base, transactional);
        base += records.len() as i64 + rng.below(3) as i64;
        out.extend_from_slice(&encode(&records, CODECS[rng.below(CODECS.len())]));
    }
    out
}

/// The batches of a record set, by their length fields, as long as those add up.
fn batch_bounds(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut bounds = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let length = i32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        let Ok(length) = usize::try_from(length) else {
            break;
        };
        let end = at + 12 + length;
        if length < HEADER_LEN - 12 || end > bytes.len() {
            break;
        }
        bounds.push((at, end));
        at = end;
    }
    bounds
}

fn fix_crc(bytes: &mut [u8], (start, end): (usize, usize)) {
    let crc = crc32c::crc32c(&bytes[start + 21..end]);
    bytes[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
}

fn compress(codec: Compression, raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match codec {
        Compression::None => raw.to_vec(),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(raw).unwrap();
            encoder.finish().unwrap()
        }
        Compression::Snappy => snap::raw::Encoder::new().compress_vec(raw).unwrap(),
        Compression::Lz4 => {
            let mut encoder = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
            encoder.write_all(raw).unwrap();
            let (out, result) = encoder.finish();
            result.unwrap();
            out
        }
        Compression::Zstd => zstd::bulk::compress(raw, 1).unwrap(),
    }
}

/// Mutates the uncompressed records of one batch of `bytes` (built anew from `records` in
/// the batch's codec) and puts it back compressed, lengths and CRC fixed: reaches the record
/// decoder behind every codec.
fn mutate_inside(rng: &mut Rng, bytes: &mut BytesMut) {
    let bounds = batch_bounds(bytes);
    if bounds.is_empty() {
        return;
    }
    let (start, end) = bounds[rng.below(bounds.len())];
    let attributes = i16::from_be_bytes([bytes[start + 21], bytes[start + 22]]);
    let codec = CODECS[(attributes & 7) as usize % CODECS.len()];
    // The batch's records, uncompressed: the seed's own records re-encoded without codec.
    let mut copy = bytes[start..end].to_vec();
    let Ok(sets) = RecordBatchDecoder::decode_all(&mut Bytes::from(std::mem::take(&mut copy)))
    else {
        return;
    };
    let records: Vec<Record> = sets.into_iter().flat_map(|s| s.records).collect();
    if records.is_empty() || records[0].control {
        return;
    }
    let plain = encode(&records, Compression::None);
    let mut raw = plain[HEADER_LEN..].to_vec();
    for _ in 0..1 + rng.below(4) {
        if raw.is_empty() {
            break;
        }
        let at = rng.below(raw.len());
        match rng.below(4) {
            0 => raw[at] ^= 1 << rng.below(8),
            // Varints: a huge or negative length.
            1 => raw[at] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe][rng.below(6)],
            2 => raw.truncate(at),
            _ => {
                let extra: Vec<u8> = (0..rng.below(16)).map(|_| rng.next() as u8).collect();
                raw.splice(at..at, extra);
            }
        }
    }
    let body = compress(codec, &raw);
    let mut batch = bytes[start..start + HEADER_LEN].to_vec();
    batch.extend_from_slice(&body);
    let length = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    let len = batch.len();
    fix_crc(&mut batch, (0, len));
    let mut out = BytesMut::from(&bytes[..start]);
    out.extend_from_slice(&batch);
    out.extend_from_slice(&bytes[end..]);
    *bytes = out;
}

fn mutate(rng: &mut Rng, bytes: &mut BytesMut, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        match rng.below(9) {
            0 if len > 0 => {
                let at = rng.below(len);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                bytes[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            2 => bytes.truncate(rng.below(len + 1)),
            3 => {
                // A batch length field.
                let bounds = batch_bounds(bytes);
                if let Some(&(start, _)) = bounds.get(rng.below(bounds.len().max(1))) {
                    let value: i32 =
                        [-1, 0, 1, 48, 49, i32::MAX, (rng.next() as i32) % 4096][rng.below(7)];
                    bytes[start + 8..start + 12].copy_from_slice(&value.to_be_bytes());
                }
            }
            4 => {
                // A record count.
                let bounds = batch_bounds(bytes);
                if let Some(&(start, _)) = bounds.get(rng.below(bounds.len().max(1))) {
                    let value: i32 = [-1, 0, 1, 1000, i32::MAX][rng.below(5)];
                    bytes[start + 57..start + 61].copy_from_slice(&value.to_be_bytes());
                }
            }
            5 => {
                // The attributes: another codec, the control or transactional bit.
                let bounds = batch_bounds(bytes);
                if let Some(&(start, _)) = bounds.get(rng.below(bounds.len().max(1))) {
                    bytes[start + 22] ^= 1 << rng.below(6);
                }
            }
            6 => {
                let cut = rng.below(other.len() + 1);
                bytes.extend_from_slice(&other[..cut]);
            }
            7 => mutate_inside(rng, bytes),
            _ => {}
        }
    }
    // Mostly keep CRCs right, so mutations get past the CRC check to the code behind it.
    if rng.below(4) != 0 {
        for bounds in batch_bounds(bytes) {
            fix_crc(bytes, bounds);
        }
    }
}

/// The data records of a record set, batch by batch, as kafka-protocol's decoder reads them
/// (it checks CRCs). Control batches are the engine's to forward untouched, not to read, so
/// they are skipped, and so are batches found byte for byte in `forwarded` (the input, for an
/// output): the engine read them and had nothing to mask, and kafka-protocol's codecs are
/// stricter than some of Kafka's (raw snappy blocks). `Ok(None)`: a header key that is not
/// UTF-8, which the decoder refuses and Kafka does not.
fn data_records(bytes: &[u8], forwarded: &[&[u8]]) -> Result<Option<Vec<Record>>, String> {
    let bounds = batch_bounds(bytes);
    if bounds.last().map_or(0, |&(_, end)| end) != bytes.len() {
        return Err("the batches do not add up to the record set".into());
    }
    let mut records = Vec::new();
    for (start, end) in bounds {
        let attributes = i16::from_be_bytes([bytes[start + 21], bytes[start + 22]]);
        if attributes & 0x20 != 0 {
            continue;
        }
        let batch = &bytes[start..end];
        match RecordBatchDecoder::decode_all(&mut Bytes::copy_from_slice(batch)) {
            Ok(sets) => records.extend(sets.into_iter().flat_map(|set| set.records)),
            Err(error) if error.to_string().contains("utf-8") => return Ok(None),
            Err(_) if forwarded.contains(&batch) => {}
            Err(error) => return Err(format!("batch at byte {start}: {error}")),
        }
    }
    Ok(Some(records))
}

/// Checks one input against one plan: whether it was refused, or what went wrong.
fn check(plan: &FuzzPlan, input: &[u8]) -> Result<bool, String> {
    let mut stats = MaskStats::default();
    let result = catch_unwind(AssertUnwindSafe(|| {
        mask_batch(input, &plan.plan, &mut stats)
    }))
    .map_err(|_| format!("{}: mask_batch panicked", plan.name))?;
    let output = match result {
        Err(_) => return Ok(true), // refused: the proxy answers with an error
        Ok(None) => Bytes::copy_from_slice(input),
        Ok(Some(output)) => output,
    };
    let again = catch_unwind(AssertUnwindSafe(|| {
        mask_batch(&output, &plan.plan, &mut MaskStats::default())
    }))
    .map_err(|_| format!("{}: masking the output panicked", plan.name))?;
    if let Err(error) = again {
        return Err(format!(
            "{}: the output cannot be masked again: {error}",
            plan.name
        ));
    }
    let input_batches: Vec<&[u8]> = batch_bounds(input)
        .into_iter()
        .map(|(start, end)| &input[start..end])
        .collect();
    let Some(records) = data_records(&output, &input_batches)
        .map_err(|e| format!("{}: the output is not a valid record set: {e}", plan.name))?
    else {
        return Ok(false);
    };
    if stats.truncated_batches_dropped == 0
        && let Ok(Some(before)) = data_records(input, &[])
    {
        let before: Vec<i64> = before.iter().map(|r| r.offset).collect();
        let after: Vec<i64> = records.iter().map(|r| r.offset).collect();
        if before != after {
            return Err(format!(
                "{}: offsets {before:?} became {after:?}",
                plan.name
            ));
        }
    }
    if plan.masks_emails {
        for record in &records {
            if let Some(value) = &record.value
                && memchr_marker(value)
            {
                return Err(format!(
                    "{}: a value still holds the address: {}",
                    plan.name,
                    String::from_utf8_lossy(value)
                ));
            }
        }
    }
    Ok(false)
}

fn memchr_marker(value: &[u8]) -> bool {
    value.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())
}

#[test]
fn mutated_record_sets_are_refused_or_come_out_valid_and_masked() {
    let budget = Duration::from_secs(
        std::env::var("STREAMWARD_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let replay: Option<u64> = std::env::var("STREAMWARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let plans = plans();
    let started = Instant::now();
    let mut meta = Rng(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1);
    let (mut cases, mut refused) = (0u64, 0u64);
    loop {
        let case_seed = replay.unwrap_or_else(|| meta.next() | 1);
        let mut rng = Rng(case_seed);
        let other = seed(&mut rng);
        let mut input = seed(&mut rng);
        // Every tenth case unmutated: valid input must always come out valid and masked.
        if !rng.chance(10) {
            mutate(&mut rng, &mut input, &other);
        }
        for plan in &plans {
            match check(plan, &input) {
                Ok(was_refused) => refused += u64::from(was_refused),
                Err(problem) => panic!(
                    "{problem}\nreplay with STREAMWARD_FUZZ_SEED={case_seed} (one case)\ninput: {}",
                    hex::encode(&input)
                ),
            }
        }
        cases += 1;
        if replay.is_some() || started.elapsed() >= budget {
            break;
        }
    }
    let checks = cases * plans.len() as u64;
    eprintln!(
        "mask fuzz: {cases} record sets × {} plans in {:.1?}, {refused} of {checks} refused",
        plans.len(),
        started.elapsed()
    );
    if replay.is_none() {
        // The mutations must leave a fair share readable, or the fuzzer only tests the CRC check.
        assert!(refused < checks * 9 / 10, "{refused} of {checks} refused");
        assert!(cases >= 50, "only {cases} cases in {budget:?}");
    }
}
