//! Masking the records of a Produce request or a Fetch response: a set of v2 record batches.
//!
//! Only what masking changes is rewritten. A batch whose records all stay as they are is
//! copied byte for byte (not recompressed); in a batch that changes, a record that stays is
//! copied byte for byte, and a changed one is re-encoded with its attributes, timestamp and
//! offset deltas, key and header order exactly as they were. The batch header is kept as it
//! was (base offset, partition leader epoch, attributes with the compression, timestamp type
//! and transactional/control bits, last offset delta, first and max timestamps, producer id,
//! epoch, base sequence, record count); only the length and the CRC are computed anew, and the
//! records are compressed with the batch's own codec.
//!
//! kafka-protocol's `RecordBatchDecoder`/`RecordBatchEncoder` are not used for the framing
//! because a decode/encode round trip through them changes what a consumer sees: the encoder
//! drops the LogAppendTime bit and recomputes the max timestamp (so consumers of a
//! LogAppendTime topic get the producer's timestamps), recomputes the first timestamp and the
//! last offset delta (compacted batches), writes nothing for an empty batch, and headers go
//! through a map that merges repeated keys. Its compression codecs are used as they are (see
//! [`super::compression`]), and the tests check every batch written here with its decoder.
//!
//! Decoding is strict and never panics: a batch that cannot be read (bad CRC, lengths that do
//! not add up, unknown codec, old message format) is an error, and the caller refuses the
//! request rather than forward records it could not mask. The one exception is a Fetch
//! response's last batch cut short by the broker's size limit, which clients ignore and fetch
//! again: it is dropped (masking it is impossible, forwarding it would leak its start).

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::Compression;
use streamward_api::config::Flow;

use super::budget::{Allowance, MemoryBudget, OverBudget};
use super::compression::{self, DecompressError};
use super::plan::MaskingPlan;
use super::value::{HeaderMasked, Scratch, mask_header, mask_value_into};

/// Bytes before a batch's `length` field counts: base offset (8) and length (4).
const LOG_OVERHEAD: usize = 12;
/// A v2 batch header, up to the first record.
const HEADER_LEN: usize = 61;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const RECORD_COUNT_AT: usize = 57;
const CONTROL_BIT: i16 = 1 << 5;

/// Why a record set could not be masked. The caller must not forward the original records
/// (they may hold what should have been masked): refuse the request (Produce: CORRUPT_MESSAGE)
/// or the partition (Fetch: an error for that partition).
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// The bytes are not a valid record batch.
    #[error("record batch at byte {position} of the record set is corrupt: {reason}")]
    Corrupt {
        /// Where the batch starts in the record set.
        position: usize,
        /// What does not add up.
        reason: String,
    },
    /// A message set of format v0 or v1 (magic 0 or 1), which cannot be masked.
    #[error(
        "record batch at byte {position} uses message format v{magic}; only v2 batches (Kafka \
         0.11 and later) can be masked, upgrade the client or the topic's message format"
    )]
    UnsupportedFormat {
        /// Where the batch starts.
        position: usize,
        /// Its magic byte.
        magic: i8,
    },
    /// The stored CRC does not match the batch.
    #[error(
        "record batch at byte {position} fails its CRC check (stored {stored:#010x}, computed \
         {computed:#010x}); the batch was damaged on the way"
    )]
    Crc {
        /// Where the batch starts.
        position: usize,
        /// The CRC in the batch.
        stored: u32,
        /// The CRC of its bytes.
        computed: u32,
    },
    /// The records cannot be decompressed.
    #[error("record batch at byte {position} cannot be decompressed ({codec:?}): {reason}")]
    Decompress {
        /// Where the batch starts.
        position: usize,
        /// Its codec.
        codec: Compression,
        /// What the codec said.
        reason: String,
    },
    /// The records decompress to more than the plan allows.
    #[error(
        "record batch at byte {position} decompresses to more than {limit} bytes, the most the \
         proxy masks in one batch; produce smaller batches or raise the limit"
    )]
    TooLarge {
        /// Where the batch starts.
        position: usize,
        /// The limit.
        limit: usize,
    },
    /// The masked records could not be compressed again.
    #[error("record batch at byte {position} cannot be compressed again ({codec:?}): {reason}")]
    Compress {
        /// Where the batch starts.
        position: usize,
        /// Its codec.
        codec: Compression,
        /// What the codec said.
        reason: String,
    },
    /// Masking the records needs more memory than the proxy may use for them.
    #[error("record batch at byte {position} cannot be masked: {over}")]
    Memory {
        /// Where the batch starts.
        position: usize,
        /// Which bound it met.
        over: OverBudget,
    },
    /// A Produce request's last batch is cut short.
    #[error(
        "the record batch at byte {position} is cut short; a produce request must hold whole \
         batches"
    )]
    Truncated {
        /// Where the batch starts.
        position: usize,
    },
}

/// Counts for metrics and audit events, added up over the calls that share it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MaskStats {
    /// Record batches read.
    pub batches: u64,
    /// Batches rewritten because something in them was masked.
    pub batches_rewritten: u64,
    /// Records read (in data batches; control batches are not read).
    pub records: u64,
    /// Records whose value or headers changed.
    pub records_masked: u64,
    /// Leaves and detector matches masked in values (a value replaced whole counts 1).
    pub fields_masked: u64,
    /// Header values masked.
    pub headers_masked: u64,
    /// Values that were not in their rule's format.
    pub parse_failures: u64,
    /// Cut-off last batches dropped from Fetch responses.
    pub truncated_batches_dropped: u64,
}

impl MaskStats {
    /// Adds `other`'s counts to these.
    fn add(&mut self, other: &MaskStats) {
        self.batches += other.batches;
        self.batches_rewritten += other.batches_rewritten;
        self.records += other.records;
        self.records_masked += other.records_masked;
        self.fields_masked += other.fields_masked;
        self.headers_masked += other.headers_masked;
        self.parse_failures += other.parse_failures;
        self.truncated_batches_dropped += other.truncated_batches_dropped;
    }
}

/// Buffers for one call: nothing is allocated per record.
#[derive(Default)]
struct BatchScratch {
    value: Scratch,
    /// Decompressed records.
    records: Vec<u8>,
    /// Rewritten records (uncompressed).
    rewritten: BytesMut,
    /// A record's body while its length is not known.
    body: Vec<u8>,
    /// A masked value.
    masked: Vec<u8>,
}

impl BatchScratch {
    /// Bytes the buffers hold.
    fn bytes(&self) -> usize {
        self.records.capacity()
            + self.rewritten.capacity()
            + self.body.capacity()
            + self.masked.capacity()
            + self.value.bytes()
    }
}

/// Masks the records of one partition (the `records` of a Produce request or a Fetch
/// response) with `plan`, adding to `stats`. Returns `None` when nothing changed, so the caller
/// forwards the original bytes without a copy; otherwise the new record set. Control batches
/// are left alone. Memory is not bounded beyond the plan's per-batch cap: the data path uses
/// [`mask_batch_within`].
pub fn mask_batch(
    records: &[u8],
    plan: &MaskingPlan,
    stats: &mut MaskStats,
) -> Result<Option<Bytes>, MaskError> {
    mask_batch_within(
        records,
        plan,
        stats,
        &mut MemoryBudget::unbounded().allowance(),
    )
}

/// [`mask_batch`], taking every buffer it grows (decompressed records, their rewritten copy,
/// the new record set) from `allowance` first: a record set that does not fit is an error
/// ([`MaskError::Memory`]), never an allocation past the bound.
pub fn mask_batch_within(
    records: &[u8],
    plan: &MaskingPlan,
    stats: &mut MaskStats,
    allowance: &mut Allowance<'_>,
) -> Result<Option<Bytes>, MaskError> {
    let room = records.len() + 256;
    let masked = mask_into(records, plan, stats, allowance, room)?;
    Ok(masked.map(BytesMut::freeze))
}

/// [`mask_batch_within`], writing the new record set into a buffer with room for `room` bytes
/// (taken from `allowance` with it): room for more records after these, or for what masking adds.
fn mask_into(
    records: &[u8],
    plan: &MaskingPlan,
    stats: &mut MaskStats,
    allowance: &mut Allowance<'_>,
    room: usize,
) -> Result<Option<BytesMut>, MaskError> {
    if plan.is_empty() || records.is_empty() {
        return Ok(None);
    }
    let mut scratch = BatchScratch::default();
    // The new record set, once something changed: `records[..copied]` rewritten into it.
    let mut out: Option<BytesMut> = None;
    let mut copied = 0;
    let mut position = 0;
    while position < records.len() {
        let rest = &records[position..];
        let corrupt = |reason: &str| MaskError::Corrupt {
            position,
            reason: reason.to_owned(),
        };
        let whole = rest.len() >= LOG_OVERHEAD && {
            let length = i32::from_be_bytes(read(rest, 8)?);
            let length = usize::try_from(length).map_err(|_| corrupt("negative batch length"))?;
            rest.len() - LOG_OVERHEAD >= length
        };
        if rest.len() > MAGIC_AT && rest[MAGIC_AT] as i8 != 2 {
            return Err(MaskError::UnsupportedFormat {
                position,
                magic: rest[MAGIC_AT] as i8,
            });
        }
        if !whole {
            if plan.flow() == Flow::Produce {
                return Err(MaskError::Truncated { position });
            }
            stats.truncated_batches_dropped += 1;
            if out.is_none() {
                hold(allowance, scratch.bytes() + room, position)?;
            }
            let out = out.get_or_insert_with(|| BytesMut::with_capacity(room));
            out.extend_from_slice(&records[copied..position]);
            copied = records.len();
            break;
        }
        let length = i32::from_be_bytes(read(rest, 8)?) as usize + LOG_OVERHEAD;
        let batch = &rest[..length];
        stats.batches += 1;
        let out_bytes = out.as_ref().map_or(0, BytesMut::capacity);
        let rewritten = mask_one(
            batch,
            position,
            plan,
            stats,
            &mut scratch,
            allowance,
            out_bytes,
        )?;
        if let Some(new_records) = rewritten {
            if out.is_none() {
                // mask_one holds what the scratch buffers hold; the new record set comes on top.
                let total = allowance.held() + room;
                hold(allowance, total, position)?;
            }
            let out = out.get_or_insert_with(|| BytesMut::with_capacity(room));
            out.extend_from_slice(&records[copied..position]);
            write_batch(batch, position, new_records, out)?;
            copied = position + length;
            stats.batches_rewritten += 1;
        }
        position += length;
    }
    Ok(out.map(|mut out| {
        out.extend_from_slice(&records[copied..]);
        out
    }))
}

/// Record sets from this size up are masked in two halves at once ([`mask_record_set`]).
pub const PARALLEL_FROM: usize = 128 << 10;

/// Masks the records of one partition within `budget`: [`mask_batch_within`] with one
/// allowance, and the same result byte for byte. A record set of [`PARALLEL_FROM`] bytes or
/// more that holds more than one batch is split at the first batch boundary past its middle,
/// and its halves are masked at once: the first on this thread, the second on rayon's pool
/// (one thread in the proxy), each within half an allowance. A consumer waits for its Fetch
/// response while the proxy masks it, so two cores shorten that wait; batches are masked
/// independently of each other, so the halves joined are what one pass would have written.
/// Should either half fail (a batch it cannot read, or memory), the record set is masked again
/// in one pass: errors, and the positions they name, are the one-pass ones.
pub fn mask_record_set(
    records: &[u8],
    plan: &MaskingPlan,
    stats: &mut MaskStats,
    budget: &MemoryBudget,
) -> Result<Option<Bytes>, MaskError> {
    if plan.is_empty() {
        return Ok(None);
    }
    if let Some(masked) = split_point(records)
        .filter(|_| two_cores())
        .and_then(|middle| {
            let (first, second) = records.split_at(middle);
            mask_halves(first, second, plan, stats, budget)
        })
    {
        return Ok(masked);
    }
    mask_batch_within(records, plan, stats, &mut budget.allowance())
}

/// Whether the process may use two cores: with one, the halves would only take turns.
fn two_cores() -> bool {
    static TWO: OnceLock<bool> = OnceLock::new();
    *TWO.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2))
}

/// Where [`mask_record_set`] splits `records`: the end of the first batch that ends past the
/// middle, when the set is large enough and that batch is not its last.
pub(super) fn split_point(records: &[u8]) -> Option<usize> {
    if records.len() < PARALLEL_FROM {
        return None;
    }
    let mut position = 0;
    loop {
        let length = records.get(position + 8..position + LOG_OVERHEAD)?;
        let length = usize::try_from(i32::from_be_bytes(length.try_into().ok()?)).ok()?;
        let end = position.checked_add(LOG_OVERHEAD + length)?;
        if end >= records.len() {
            return None; // the last batch, whole or cut short: nothing to split off
        }
        if end >= records.len() / 2 {
            return Some(end);
        }
        position = end;
    }
}

/// Masks `first` and `second` at once and joins them; `None` when either half failed, or the
/// joined record set does not fit the budget.
fn mask_halves(
    first: &[u8],
    second: &[u8],
    plan: &MaskingPlan,
    stats: &mut MaskStats,
    budget: &MemoryBudget,
) -> Option<Option<Bytes>> {
    let half = |records: &[u8], room: usize| {
        let mut stats = MaskStats::default();
        let mut allowance = budget.part_allowance(2);
        let masked = mask_into(records, plan, &mut stats, &mut allowance, room);
        Some((masked.ok()?, stats, allowance))
    };
    // The first half's new records get room for the second's: they are joined without a copy.
    let whole = first.len() + second.len() + 256;
    // The second half goes to rayon's pool; this thread masks the first meanwhile.
    let (mut a, mut b) = (None, None);
    rayon_core::in_place_scope(|scope| {
        scope.spawn(|_| b = half(second, second.len() + 256));
        a = half(first, whole);
    });
    let ((a, a_stats, _a_held), (b, b_stats, _b_held)) = (a?, b?);
    stats.add(&a_stats);
    stats.add(&b_stats);
    match (a, b.as_deref()) {
        (None, None) => Some(None),
        (Some(mut joined), b) => {
            joined.extend_from_slice(b.unwrap_or(second));
            Some(Some(joined.freeze()))
        }
        (None, Some(b)) => {
            // Held while the halves' allowances still hold the second half's new records.
            let mut allowance = budget.allowance();
            allowance.hold(first.len() + b.len()).ok()?;
            let mut joined = BytesMut::with_capacity(first.len() + b.len());
            joined.extend_from_slice(first);
            joined.extend_from_slice(b);
            Some(Some(joined.freeze()))
        }
    }
}

fn hold(allowance: &mut Allowance<'_>, total: usize, position: usize) -> Result<(), MaskError> {
    allowance
        .hold(total)
        .map_err(|over| MaskError::Memory { position, over })
}

fn read<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], MaskError> {
    bytes
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| MaskError::Corrupt {
            position: at,
            reason: "the batch header is cut short".into(),
        })
}

/// Masks the records of one whole batch. Returns the rewritten records (uncompressed) when
/// something changed.
fn mask_one<'s>(
    batch: &[u8],
    position: usize,
    plan: &MaskingPlan,
    stats: &mut MaskStats,
    scratch: &'s mut BatchScratch,
    allowance: &mut Allowance<'_>,
    out_bytes: usize,
) -> Result<Option<&'s mut BytesMut>, MaskError> {
    let corrupt = |reason: &str| MaskError::Corrupt {
        position,
        reason: reason.to_owned(),
    };
    if batch.len() < HEADER_LEN {
        return Err(corrupt("the batch is shorter than a v2 batch header"));
    }
    let stored = u32::from_be_bytes(read(batch, CRC_AT)?);
    let computed = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    if stored != computed {
        return Err(MaskError::Crc {
            position,
            stored,
            computed,
        });
    }
    let attributes = i16::from_be_bytes(read(batch, ATTRIBUTES_AT)?);
    let codec = compression::codec(attributes)
        .ok_or_else(|| corrupt(&format!("unknown compression codec {}", attributes & 0x7)))?;
    if attributes & CONTROL_BIT != 0 {
        return Ok(None);
    }
    let count = i32::from_be_bytes(read(batch, RECORD_COUNT_AT)?);
    let count = usize::try_from(count).map_err(|_| corrupt("negative record count"))?;
    let payload = &batch[HEADER_LEN..];
    let BatchScratch {
        value: value_scratch,
        records: decompressed,
        rewritten,
        body,
        masked,
    } = scratch;
    let mut decompressed_bytes = 0;
    let records: &[u8] = if codec == Compression::None {
        payload
    } else {
        let others = out_bytes
            + rewritten.capacity()
            + body.capacity()
            + masked.capacity()
            + value_scratch.bytes();
        compression::decompress_within(
            codec,
            payload,
            plan.max_decompressed_bytes(),
            decompressed,
            &mut |n| allowance.hold(others + n),
        )
        .map_err(|error| match error {
            DecompressError::Budget(over) => MaskError::Memory { position, over },
            DecompressError::TooLarge => MaskError::TooLarge {
                position,
                limit: plan.max_decompressed_bytes(),
            },
            DecompressError::Invalid(reason) => MaskError::Decompress {
                position,
                codec,
                reason,
            },
        })?;
        decompressed_bytes = decompressed.capacity();
        decompressed
    };
    // Everything but `rewritten`, which grows through `reserve` below.
    let held_besides = |body: &Vec<u8>, masked: &Vec<u8>, value: &super::value::Scratch| {
        out_bytes + decompressed_bytes + body.capacity() + masked.capacity() + value.bytes()
    };

    rewritten.clear();
    let mut changed = false;
    let mut copied = 0;
    let mut at = 0;
    for _ in 0..count {
        let start = at;
        let record = Record::parse(records, &mut at).map_err(&corrupt)?;
        stats.records += 1;
        let value = match record.value {
            Some(bytes) if plan.masks_values() => {
                let outcome = mask_value_into(plan, bytes, masked, value_scratch);
                stats.fields_masked += u64::from(outcome.fields);
                stats.parse_failures += u64::from(outcome.parse_failed);
                let total = held_besides(body, masked, value_scratch) + rewritten.capacity();
                hold(allowance, total, position)?;
                outcome.changed.then_some(masked.as_slice())
            }
            _ => None,
        };
        let headers_changed = !plan.headers.is_empty()
            && record.headers().any(|(key, old)| {
                mask_header(plan, key, old, &mut value_scratch.header) != HeaderMasked::Unchanged
            });
        if value.is_none() && !headers_changed {
            continue;
        }
        // Rewrite this record; the records before it since the last rewrite are copied.
        stats.records_masked += 1;
        body.clear();
        body.extend_from_slice(record.prefix);
        put_bytes(body, value.or(record.value));
        put_varint(body, record.header_count);
        for (key, old) in record.headers() {
            put_bytes(body, Some(key));
            match mask_header(plan, key, old, &mut value_scratch.header) {
                HeaderMasked::Unchanged => put_bytes(body, old),
                HeaderMasked::Value(new) => {
                    stats.headers_masked += 1;
                    put_bytes(body, new);
                }
            }
        }
        let (prefix, used) = varint_bytes(body.len() as i64);
        // The first rewrite makes room for the whole batch at once; later ones for what
        // masking adds.
        let additional = if changed {
            start - copied + used + body.len()
        } else {
            records.len() - copied + used + body.len() + 64
        };
        let others = held_besides(body, masked, value_scratch);
        reserve(rewritten, additional, others, allowance, position)?;
        changed = true;
        rewritten.extend_from_slice(&records[copied..start]);
        rewritten.extend_from_slice(&prefix[..used]);
        rewritten.extend_from_slice(body);
        copied = at;
    }
    if at != records.len() {
        return Err(corrupt(
            "bytes left after the last record; the record count does not match the records",
        ));
    }
    if !changed {
        return Ok(None);
    }
    let others = held_besides(body, masked, value_scratch);
    reserve(
        rewritten,
        records.len() - copied,
        others,
        allowance,
        position,
    )?;
    rewritten.extend_from_slice(&records[copied..]);
    Ok(Some(rewritten))
}

/// Makes room for `additional` more bytes in `buffer`, growing it (by doubling, as it would
/// grow anyway) only once `allowance` holds it and `others`.
fn reserve(
    buffer: &mut BytesMut,
    additional: usize,
    others: usize,
    allowance: &mut Allowance<'_>,
    position: usize,
) -> Result<(), MaskError> {
    if buffer.capacity() - buffer.len() >= additional {
        return Ok(());
    }
    let target = (buffer.len() + additional).max(buffer.capacity().saturating_mul(2));
    hold(allowance, others + target, position)?;
    buffer.reserve(target - buffer.len());
    Ok(())
}

/// Writes a rewritten batch: the original header with a new length and CRC, then the records
/// compressed with the batch's codec.
fn write_batch(
    batch: &[u8],
    position: usize,
    records: &mut BytesMut,
    out: &mut BytesMut,
) -> Result<(), MaskError> {
    let attributes = i16::from_be_bytes(read(batch, ATTRIBUTES_AT)?);
    let codec = compression::codec(attributes).unwrap_or(Compression::None);
    let start = out.len();
    out.extend_from_slice(&batch[..HEADER_LEN]);
    compression::compress(codec, records, out).map_err(|error| MaskError::Compress {
        position,
        codec,
        reason: error.to_string(),
    })?;
    let length = out.len() - start - LOG_OVERHEAD;
    let length = i32::try_from(length).map_err(|_| MaskError::Compress {
        position,
        codec,
        reason: "the masked batch is larger than 2 GiB".into(),
    })?;
    out[start + 8..start + 12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[start + ATTRIBUTES_AT..]);
    out[start + CRC_AT..start + CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// One record, borrowed from the (decompressed) records.
struct Record<'r> {
    /// Attributes, timestamp delta, offset delta and key, as they were.
    prefix: &'r [u8],
    value: Option<&'r [u8]>,
    header_count: i64,
    /// The headers, as they were.
    headers: &'r [u8],
}

impl<'r> Record<'r> {
    /// Parses the record at `*at`, moving `*at` past it.
    fn parse(records: &'r [u8], at: &mut usize) -> Result<Record<'r>, &'static str> {
        let length = varint(records, at)?;
        let length = usize::try_from(length).map_err(|_| "a negative record length")?;
        let end = at
            .checked_add(length)
            .filter(|&end| end <= records.len())
            .ok_or("a record longer than its batch")?;
        let record = &records[..end];
        let start = *at;
        if record.get(start).is_none() {
            return Err("an empty record");
        }
        let mut i = start + 1; // attributes
        varint(record, &mut i)?; // timestamp delta
        varint(record, &mut i)?; // offset delta
        bytes(record, &mut i)?; // key
        let prefix = &record[start..i];
        let value = bytes(record, &mut i)?;
        let header_count = varint(record, &mut i)?;
        if !(0..=i64::from(i32::MAX)).contains(&header_count) {
            return Err("a negative header count");
        }
        let headers_start = i;
        for _ in 0..header_count {
            if bytes(record, &mut i)?.is_none() {
                return Err("a header without a key");
            }
            bytes(record, &mut i)?;
        }
        if i != end {
            return Err("a record whose fields do not fill its length");
        }
        *at = end;
        Ok(Record {
            prefix,
            value,
            header_count,
            headers: &record[headers_start..end],
        })
    }

    /// The headers in order (repeated keys included).
    fn headers(&self) -> impl Iterator<Item = (&'r [u8], Option<&'r [u8]>)> + use<'r> {
        let headers = self.headers;
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= headers.len() {
                return None;
            }
            // Checked by `parse`.
            let key = bytes(headers, &mut at).ok()??;
            let value = bytes(headers, &mut at).ok()?;
            Some((key, value))
        })
    }
}

/// A zigzag varint (Kafka's varint and varlong), at most 10 bytes.
fn varint(bytes: &[u8], at: &mut usize) -> Result<i64, &'static str> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *bytes.get(*at).ok_or("a varint cut short")?;
        *at += 1;
        if shift == 63 && byte > 1 {
            return Err("a varint longer than 64 bits");
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err("a varint longer than 10 bytes")
}

/// Length-prefixed bytes (length -1 is null).
fn bytes<'b>(bytes_: &'b [u8], at: &mut usize) -> Result<Option<&'b [u8]>, &'static str> {
    let length = varint(bytes_, at)?;
    if length == -1 {
        return Ok(None);
    }
    let length = usize::try_from(length).map_err(|_| "a negative length")?;
    let end = at
        .checked_add(length)
        .filter(|&end| end <= bytes_.len())
        .ok_or("bytes longer than their record")?;
    let slice = &bytes_[*at..end];
    *at = end;
    Ok(Some(slice))
}

/// The zigzag varint of `value`: the bytes and how many of them are used.
fn varint_bytes(value: i64) -> ([u8; 10], usize) {
    let mut bytes = [0u8; 10];
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut used = 0;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            bytes[used] = byte;
            return (bytes, used + 1);
        }
        bytes[used] = byte | 0x80;
        used += 1;
    }
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let (bytes, used) = varint_bytes(value);
    out.extend_from_slice(&bytes[..used]);
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(bytes) => {
            put_varint(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for value in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i32::MAX.into(),
            i32::MIN.into(),
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut at = 0;
            assert_eq!(varint(&out, &mut at), Ok(value));
            assert_eq!(at, out.len());
        }
        assert!(varint(&[0x80], &mut 0).is_err());
        assert!(varint(&[0xff; 11], &mut 0).is_err());
    }
}
