//! Record batch compression: decompression with a size limit (a batch is a peer's input, and
//! a few kilobytes of zstd can claim gigabytes), compression with kafka-protocol's codecs (the
//! framing Kafka's clients expect: gzip, xerial snappy, zstd) except LZ4, see [`compress`].

use std::io::Read;

use bytes::BytesMut;
use kafka_protocol::compression::{Compressor, Gzip, Snappy, Zstd};
use kafka_protocol::records::Compression;

use super::budget::OverBudget;

/// The xerial snappy stream header Java clients write (magic, version 1, compatible 1).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

/// The compression of a batch from the low bits of its attributes.
pub(crate) fn codec(attributes: i16) -> Option<Compression> {
    Some(match attributes & 0x7 {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => return None,
    })
}

/// Why a batch could not be decompressed.
#[derive(Debug)]
pub(crate) enum DecompressError {
    TooLarge,
    Invalid(String),
    /// The output could not grow within the memory allowed.
    Budget(OverBudget),
}

/// Asked for `n` bytes before the output grows to a capacity of `n`.
pub(crate) type Grow<'g> = dyn FnMut(usize) -> Result<(), OverBudget> + 'g;

/// The first capacity the output gets: a guess from the input, grown by doubling from there.
const FIRST_CHUNK: usize = 64 << 10;

/// Decompresses `input` into `out` (cleared first), refusing to produce more than `limit`
/// bytes.
#[cfg(test)]
pub(crate) fn decompress(
    codec: Compression,
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecompressError> {
    decompress_within(codec, input, limit, out, &mut |_| Ok(()))
}

/// [`decompress`], asking `grow` before `out` grows: the output's memory is taken from a
/// budget as it is needed, never more than one doubling ahead of the data.
pub(crate) fn decompress_within(
    codec: Compression,
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
    grow: &mut Grow<'_>,
) -> Result<(), DecompressError> {
    out.clear();
    let invalid = |error: std::io::Error| DecompressError::Invalid(error.to_string());
    match codec {
        Compression::None => {
            if input.len() > limit {
                return Err(DecompressError::TooLarge);
            }
            grow(input.len()).map_err(DecompressError::Budget)?;
            out.extend_from_slice(input);
        }
        Compression::Gzip => {
            let reader = flate2::read::MultiGzDecoder::new(input);
            read_within(reader, input.len(), limit, out, grow)?;
        }
        Compression::Lz4 => {
            if let Some(result) = lz4_independent_blocks(input, limit, out, grow) {
                result?;
            } else {
                out.clear();
                let reader = lz4::Decoder::new(input).map_err(invalid)?;
                read_within(reader, input.len(), limit, out, grow)?;
            }
        }
        Compression::Zstd => {
            // The window is memory the decoder allocates before producing a byte: the one the
            // first frame declares is taken from the budget with the output, and no frame may
            // declare more (the decoder refuses it).
            let most = window_log(limit);
            let declared = zstd_window(input).unwrap_or(1 << most);
            let log = (usize::BITS - declared.saturating_sub(1).leading_zeros()).clamp(10, most);
            let window = declared.min(1 << log) + ZSTD_BUFFERS;
            grow(window).map_err(DecompressError::Budget)?;
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(invalid)?;
            decoder.window_log_max(log).map_err(invalid)?;
            read_within(decoder, input.len(), limit, out, &mut |n| {
                grow(window.saturating_add(n))
            })?;
        }
        Compression::Snappy => snappy(input, limit, out, grow)?,
    }
    if out.len() > limit {
        return Err(DecompressError::TooLarge);
    }
    Ok(())
}

/// Reads `reader` to its end into `out`, at most `limit + 1` bytes, growing `out` by doubling
/// (from a guess of four times the compressed size) only after `grow` allowed it and only when
/// more data is there.
fn read_within(
    mut reader: impl Read,
    compressed: usize,
    limit: usize,
    out: &mut Vec<u8>,
    grow: &mut Grow<'_>,
) -> Result<(), DecompressError> {
    let invalid = |error: std::io::Error| DecompressError::Invalid(error.to_string());
    let cap = limit.saturating_add(1);
    loop {
        if out.len() >= cap {
            return Err(DecompressError::TooLarge);
        }
        if out.len() == out.capacity() {
            // Is there more? One byte tells, before any memory is asked for.
            let mut probe = [0u8; 1];
            let n = loop {
                match reader.read(&mut probe) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    other => break other.map_err(invalid)?,
                }
            };
            if n == 0 {
                return Ok(());
            }
            let target = if out.capacity() == 0 {
                compressed.saturating_mul(4).max(FIRST_CHUNK)
            } else {
                out.capacity().saturating_mul(2)
            }
            .min(cap)
            .max(out.len() + 1);
            grow(target).map_err(DecompressError::Budget)?;
            out.reserve_exact(target - out.len());
            out.push(probe[0]);
        }
        let room = (out.capacity() - out.len()) as u64;
        let read = (&mut reader).take(room).read_to_end(out).map_err(invalid)?;
        if (read as u64) < room {
            return Ok(());
        }
    }
}

/// Decodes an LZ4 frame of independent blocks (what Kafka's Java clients and [`lz4_frame`]
/// write) block by block with liblz4's block API, into `out` grown as [`read_within`] grows
/// it. `None` for any other frame (linked blocks, a dictionary, bytes after the frame, not an
/// LZ4 frame): liblz4's frame decoder reads those, as before.
///
/// The frame decoder allocated and zeroed a context, a 32 KiB input buffer and two 64 KiB
/// block buffers for every batch, and copied the input through them. The header checksum and
/// the optional block and content checksums (XXH32) are not verified: the batch's CRC-32C,
/// checked before decompressing, covers the compressed bytes. Any block that does not
/// decode is an error, never a panic.
fn lz4_independent_blocks(
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
    grow: &mut Grow<'_>,
) -> Option<Result<(), DecompressError>> {
    let invalid = |reason: &str| Err(DecompressError::Invalid(format!("LZ4 frame: {reason}")));
    let (magic, rest) = input.split_first_chunk::<4>()?;
    let (&[flags, descriptor], _) = rest.split_first_chunk::<2>()?;
    // Version 01, independent blocks, no dictionary, reserved bits clear.
    if u32::from_le_bytes(*magic) != 0x184D_2204 || flags & 0b1110_0011 != 0b0110_0000 {
        return None;
    }
    let max_block = match descriptor {
        0x40 => 64 << 10,
        0x50 => 256 << 10,
        0x60 => 1 << 20,
        0x70 => 4 << 20,
        _ => return None,
    };
    let block_checksum = flags & 0x10 != 0;
    let content_checksum = flags & 0x04 != 0;
    let content_size = flags & 0x08 != 0;
    // Magic, FLG, BD, the content size if any, the header checksum.
    let mut at = 7 + if content_size { 8 } else { 0 };
    if input.len() < at {
        return Some(invalid("the header is cut short"));
    }
    let cap = limit.saturating_add(1);
    let mut reserve = |out: &mut Vec<u8>, needed: usize| -> Result<(), DecompressError> {
        if needed > out.capacity() {
            let target = if out.capacity() == 0 {
                input.len().saturating_mul(4).max(FIRST_CHUNK)
            } else {
                out.capacity().saturating_mul(2)
            }
            .min(cap)
            .max(needed);
            grow(target).map_err(DecompressError::Budget)?;
            out.reserve_exact(target - out.len());
        }
        Ok(())
    };
    loop {
        let Some(size) = input.get(at..at + 4) else {
            return Some(invalid("a block size is cut short"));
        };
        let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
        at += 4;
        if size == 0 {
            break;
        }
        let length = (size & !LZ4_STORED) as usize;
        if length > max_block {
            return Some(invalid("a block is larger than the frame's block size"));
        }
        let Some(block) = input.get(at..at + length) else {
            return Some(invalid("a block is cut short"));
        };
        at += length + if block_checksum { 4 } else { 0 };
        let start = out.len();
        if size & LZ4_STORED != 0 {
            if start + length > limit {
                return Some(Err(DecompressError::TooLarge));
            }
            if let Err(error) = reserve(out, start + length) {
                return Some(Err(error));
            }
            out.extend_from_slice(block);
            continue;
        }
        // The block's size, read from its sequences: only that much output is zeroed
        // before decoding into it (a batch is often one small record).
        let Some(length) = lz4_block_length(block).filter(|&n| n <= max_block) else {
            return Some(invalid("a block does not decode"));
        };
        if start + length > limit {
            return Some(Err(DecompressError::TooLarge));
        }
        if let Err(error) = reserve(out, start + length) {
            return Some(Err(error));
        }
        out.resize(start + length, 0);
        match lz4::block::decompress_to_buffer(block, Some(length as i32), &mut out[start..]) {
            Ok(written) if written == length => {}
            Ok(_) => return Some(invalid("a block does not decode")),
            Err(error) => return Some(invalid(&error.to_string())),
        }
    }
    at += if content_checksum { 4 } else { 0 };
    match at.cmp(&input.len()) {
        std::cmp::Ordering::Equal => Some(Ok(())),
        std::cmp::Ordering::Greater => Some(invalid("the content checksum is cut short")),
        // Bytes after the frame: left to the frame decoder, as before.
        std::cmp::Ordering::Less => None,
    }
}

/// The decoded size of an LZ4 block, from its sequences' literal and match lengths (LZ4
/// block format: a token, extra literal length bytes, the literals, a 2-byte offset, extra
/// match length bytes; the last sequence has literals only). `None` when the lengths run
/// past the block. Whether the block really decodes is for the decoder to say.
fn lz4_block_length(block: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut length = 0usize;
    let extra = |at: &mut usize, mut n: usize| -> Option<usize> {
        loop {
            let byte = *block.get(*at)?;
            *at += 1;
            n = n.checked_add(usize::from(byte))?;
            if byte != 255 {
                return Some(n);
            }
        }
    };
    loop {
        let token = *block.get(at)?;
        at += 1;
        let mut literals = usize::from(token >> 4);
        if literals == 15 {
            literals = extra(&mut at, literals)?;
        }
        at = at.checked_add(literals).filter(|&end| end <= block.len())?;
        length = length.checked_add(literals)?;
        if at == block.len() {
            return Some(length);
        }
        at += 2; // the match offset
        let mut matched = usize::from(token & 15);
        if matched == 15 {
            matched = extra(&mut at, matched)?;
        }
        length = length.checked_add(matched + 4)?;
        // A decoded block is at most 4 MiB: stop walking a block that claims more.
        if length > 4 << 20 {
            return None;
        }
    }
}

/// What a zstd decoder holds besides its window (an input block and slack).
const ZSTD_BUFFERS: usize = 256 << 10;

/// The window the first zstd frame of `input` declares, in bytes (RFC 8878, 3.1.1.1): from its
/// window descriptor, or its content size for a single-segment frame. `None` when the input
/// does not start with a zstd frame header.
fn zstd_window(input: &[u8]) -> Option<usize> {
    let (magic, rest) = input.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*magic) != 0xFD2F_B528 {
        return None;
    }
    let (&descriptor, rest) = rest.split_first()?;
    if descriptor & 0x20 == 0 {
        let window = *rest.first()?;
        let base = 1usize.checked_shl(10 + u32::from(window >> 3))?;
        return base.checked_add(base / 8 * usize::from(window & 7));
    }
    let dictionary = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let size = [1, 2, 4, 8][usize::from(descriptor >> 6)];
    let bytes = rest.get(dictionary..dictionary + size)?;
    let mut value = [0u8; 8];
    value[..size].copy_from_slice(bytes);
    let content = u64::from_le_bytes(value) + if size == 2 { 256 } else { 0 };
    usize::try_from(content).ok()
}

/// The largest zstd window to accept for `limit` output bytes: enough for the limit, and at
/// least 8 MiB (producers pick windows by level, not by batch size: level 3 uses 2 MiB), at
/// most zstd's default maximum of 128 MiB.
fn window_log(limit: usize) -> u32 {
    let bits = usize::BITS - limit.max(1).saturating_sub(1).leading_zeros();
    bits.clamp(23, 27)
}

/// Snappy as Kafka's clients write it: the xerial stream (header, then blocks each prefixed by
/// its big-endian length), or one raw block.
fn snappy(
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
    grow: &mut Grow<'_>,
) -> Result<(), DecompressError> {
    let mut decoder = snap::raw::Decoder::new();
    let mut block = |compressed: &[u8], out: &mut Vec<u8>| {
        let length = snap::raw::decompress_len(compressed)
            .map_err(|e| DecompressError::Invalid(e.to_string()))?;
        if out.len().saturating_add(length) > limit {
            return Err(DecompressError::TooLarge);
        }
        let start = out.len();
        if start + length > out.capacity() {
            let target = (start + length)
                .max(out.capacity().saturating_mul(2))
                .min(limit);
            grow(target).map_err(DecompressError::Budget)?;
            out.reserve_exact(target - start);
        }
        out.resize(start + length, 0);
        let written = decoder
            .decompress(compressed, &mut out[start..])
            .map_err(|e| DecompressError::Invalid(e.to_string()))?;
        out.truncate(start + written);
        Ok(())
    };
    if !input.starts_with(XERIAL_MAGIC) {
        return block(input, out);
    }
    let mut rest = input
        .get(XERIAL_HEADER_LEN..)
        .ok_or_else(|| DecompressError::Invalid("truncated xerial snappy header".into()))?;
    while !rest.is_empty() {
        let (length, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| DecompressError::Invalid("truncated snappy block length".into()))?;
        let length = u32::from_be_bytes(*length) as usize;
        let compressed = tail
            .get(..length)
            .ok_or_else(|| DecompressError::Invalid("truncated snappy block".into()))?;
        block(compressed, out)?;
        rest = &tail[length..];
    }
    Ok(())
}

/// Compresses `records` with `codec`, appending to `out`.
///
/// LZ4 is written as Kafka's Java clients write it (`KafkaLZ4BlockOutputStream`: an LZ4 frame
/// of independent 64 KiB blocks without checksums) at LZ4's fast level: kafka-protocol's
/// codec uses LZ4HC, which took most of the time of masking an LZ4 batch, for a few percent
/// of size. The level is not part of the format; every LZ4 reader decodes both. See
/// [`lz4_frame`].
pub(crate) fn compress(
    codec: Compression,
    records: &mut BytesMut,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    // Hands the encoded records to the codec without copying them.
    let give = |tmp: &mut BytesMut| {
        std::mem::swap(tmp, records);
        Ok(())
    };
    match codec {
        Compression::None => {
            out.extend_from_slice(records);
            Ok(())
        }
        Compression::Gzip => Gzip::compress(out, give),
        Compression::Snappy => Snappy::compress(out, give),
        Compression::Lz4 => {
            lz4_frame(records, out);
            Ok(())
        }
        Compression::Zstd => Zstd::compress(out, give),
    }
}

/// The header of the LZ4 frames [`lz4_frame`] writes: the magic number, FLG `0x60` (version
/// 1, independent blocks, no block or content checksum, no content size, no dictionary), BD
/// `0x40` (blocks of 64 KiB at most) and the header checksum (the second byte of their
/// XXH32).
const LZ4_FRAME_HEADER: [u8; 7] = [0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82];
const LZ4_BLOCK_SIZE: usize = 64 << 10;
/// The high bit of a block's size: the block is stored, not compressed.
const LZ4_STORED: u32 = 1 << 31;

/// Writes `records` as one LZ4 frame, the bytes liblz4's frame API writes with the
/// preferences above at level 0 (a test compares them), with its block API: the frame API
/// allocated and zeroed a context and two 64 KiB buffers per batch, about a fifth of the
/// time of masking an LZ4 batch. Each block is compressed on its own with acceleration 1 (what
/// level 0 means); a block that would not shrink is stored, as the frame API does.
fn lz4_frame(records: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(&LZ4_FRAME_HEADER);
    for block in records.chunks(LZ4_BLOCK_SIZE) {
        let at = out.len();
        // Room for a compressed block smaller than the block, after its size.
        out.resize(at + 4 + block.len() - 1, 0);
        let compressed = lz4::block::compress_to_buffer(
            block,
            Some(lz4::block::CompressionMode::FAST(1)),
            false,
            &mut out[at + 4..],
        );
        match compressed {
            // At most 64 KiB: the size fits in 31 bits.
            Ok(size) if size > 0 && size < block.len() => {
                out.truncate(at + 4 + size);
                out[at..at + 4].copy_from_slice(&(size as u32).to_le_bytes());
            }
            // It did not fit in less than the block.
            _ => {
                out.truncate(at);
                out.extend_from_slice(&(block.len() as u32 | LZ4_STORED).to_le_bytes());
                out.extend_from_slice(block);
            }
        }
    }
    // The end mark.
    out.extend_from_slice(&[0; 4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut compressed = BytesMut::new();
            compress(codec, &mut BytesMut::from(&data[..]), &mut compressed).unwrap();
            let mut out = Vec::new();
            decompress(codec, &compressed, data.len(), &mut out).unwrap();
            assert_eq!(out, data, "{codec:?}");
            assert!(
                matches!(
                    decompress(codec, &compressed, data.len() - 1, &mut out),
                    Err(DecompressError::TooLarge)
                ),
                "{codec:?}"
            );
            if codec != Compression::None {
                assert!(
                    decompress(codec, &data[..100], 1 << 20, &mut out).is_err(),
                    "{codec:?} accepted garbage"
                );
            }
        }
    }

    /// What [`compress`] wrote for LZ4 before: liblz4's frame API.
    fn lz4_frame_api(records: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = lz4::EncoderBuilder::new()
            .block_size(lz4::BlockSize::Max64KB)
            .block_mode(lz4::BlockMode::Independent)
            .checksum(lz4::ContentChecksum::NoChecksum)
            .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
            .level(0)
            .build(Vec::new())
            .unwrap();
        encoder.write_all(records).unwrap();
        let (out, result) = encoder.finish();
        result.unwrap();
        out
    }

    /// Compressible text: `records` numbered lines, repeating with period `period`.
    fn text(records: u32, period: u32) -> Vec<u8> {
        (0..records)
            .flat_map(|i| format!("record {i} of {} ", i % period).into_bytes())
            .collect()
    }

    /// `len` incompressible bytes (xorshift64 from `seed`).
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn lz4_frames_are_the_bytes_the_frame_api_writes() {
        // Compressible text, incompressible noise, and both in one block; sizes around the
        // block size and the small sizes where a block cannot shrink.
        let text = text(300_000, 97);
        let noise = noise(300_000, 0x2545_f491_4f6c_dd1d);
        let mixed: Vec<u8> = text[..40_000]
            .iter()
            .chain(&noise[..40_000])
            .chain(&text[..100_000])
            .copied()
            .collect();
        let block = LZ4_BLOCK_SIZE;
        for data in [&text, &noise, &mixed] {
            for len in [
                0,
                1,
                2,
                13,
                100,
                4095,
                4096,
                block - 1,
                block,
                block + 1,
                2 * block + 7,
                data.len(),
            ] {
                let records = &data[..len.min(data.len())];
                let mut out = BytesMut::from(&b"header"[..]);
                compress(Compression::Lz4, &mut BytesMut::from(records), &mut out).unwrap();
                assert_eq!(&out[..6], b"header");
                assert!(
                    out[6..] == lz4_frame_api(records),
                    "{} bytes",
                    records.len()
                );
            }
        }
    }

    /// What [`decompress`] did for every LZ4 frame before: liblz4's frame decoder.
    fn lz4_frame_decoder(input: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        lz4::Decoder::new(input)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn lz4_frames_decode_as_the_frame_decoder_decodes_them() {
        use lz4::liblz4::{BlockChecksum, BlockMode, BlockSize, ContentChecksum};
        use std::io::Write;
        let text = text(20_000, 89);
        let noise = noise(300_000, 0x9e37_79b9_7f4a_7c15);
        let mut frames = Vec::new();
        for data in [
            &text[..],
            &noise[..],
            &text[..1],
            &[][..],
            &text[..70_000.min(text.len())],
        ] {
            let mut ours = BytesMut::new();
            compress(Compression::Lz4, &mut BytesMut::from(data), &mut ours).unwrap();
            frames.push((data.to_vec(), ours.to_vec()));
            for size in [BlockSize::Max64KB, BlockSize::Max256KB, BlockSize::Max4MB] {
                for mode in [BlockMode::Independent, BlockMode::Linked] {
                    for checksums in [false, true] {
                        let mut encoder = lz4::EncoderBuilder::new();
                        encoder.block_size(size.clone()).block_mode(mode.clone());
                        if checksums {
                            encoder.checksum(ContentChecksum::ChecksumEnabled);
                            encoder.block_checksum(BlockChecksum::BlockChecksumEnabled);
                            encoder.content_size(data.len() as u64);
                        } else {
                            encoder.checksum(ContentChecksum::NoChecksum);
                        }
                        let mut encoder = encoder.build(Vec::new()).unwrap();
                        encoder.write_all(data).unwrap();
                        let (frame, result) = encoder.finish();
                        result.unwrap();
                        frames.push((data.to_vec(), frame));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (data, frame) in &frames {
            decompress(Compression::Lz4, frame, 8 << 20, &mut out).unwrap();
            assert!(out == *data, "{} bytes", data.len());
            // Over the limit, by a little and by a lot.
            if !data.is_empty() {
                for limit in [data.len() - 1, data.len() / 3] {
                    assert!(matches!(
                        decompress(Compression::Lz4, frame, limit, &mut out),
                        Err(DecompressError::TooLarge)
                    ));
                }
            }
            // Cut short anywhere: an error, as for the frame decoder, never a panic.
            let step = (frame.len() / 97).max(1);
            for end in (0..frame.len()).step_by(step).chain([frame.len() - 1]) {
                let cut = &frame[..end];
                let new = decompress(Compression::Lz4, cut, 8 << 20, &mut out);
                match lz4_frame_decoder(cut) {
                    Err(_) => assert!(new.is_err(), "{end} of {} bytes", frame.len()),
                    // The frame decoder takes a few cut frames (nothing at all): the same
                    // bytes, or an error.
                    Ok(old) => assert!(new.is_err() || out == old, "{end} of {}", frame.len()),
                }
            }
            // Bytes changed anywhere: whatever comes out, no panic; a block that does not
            // decode is an error.
            for at in (0..frame.len()).step_by(step) {
                for flip in [0x01, 0x80, 0xff] {
                    let mut damaged = frame.clone();
                    damaged[at] ^= flip;
                    let _ = decompress(Compression::Lz4, &damaged, 8 << 20, &mut out);
                }
            }
        }
        // Bytes after the frame are left to the frame decoder, which ignores them.
        let (data, frame) = &frames[0];
        let mut trailing = frame.clone();
        trailing.extend_from_slice(b"trailing");
        decompress(Compression::Lz4, &trailing, 8 << 20, &mut out).unwrap();
        assert!(out == *data);
        assert!(lz4_frame_decoder(&trailing).unwrap() == *data);
    }

    #[test]
    fn raw_snappy_blocks_are_read_too() {
        let data = b"hello hello hello hello snappy".repeat(10);
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        let mut out = Vec::new();
        decompress(Compression::Snappy, &raw, 1 << 20, &mut out).unwrap();
        assert_eq!(out, data);
        // A raw block claiming 4 GiB is refused before anything is allocated.
        let bomb = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert!(matches!(
            decompress(Compression::Snappy, &bomb, 1 << 20, &mut out),
            Err(DecompressError::TooLarge)
        ));
    }

    #[test]
    fn a_zstd_bomb_is_refused() {
        let zeros = vec![0u8; 8 << 20];
        let mut compressed = BytesMut::new();
        compress(
            Compression::Zstd,
            &mut BytesMut::from(&zeros[..]),
            &mut compressed,
        )
        .unwrap();
        assert!(compressed.len() < 4096);
        let mut out = Vec::new();
        assert!(matches!(
            decompress(Compression::Zstd, &compressed, 1 << 20, &mut out),
            Err(DecompressError::TooLarge | DecompressError::Invalid(_))
        ));
        assert!(out.capacity() < 4 << 20);
    }

    #[test]
    fn output_grows_only_as_far_as_the_budget_allows() {
        let data = vec![7u8; 4 << 20];
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut compressed = BytesMut::new();
            compress(codec, &mut BytesMut::from(&data[..]), &mut compressed).unwrap();
            let mut out = Vec::new();
            let mut asked = 0;
            decompress_within(codec, &compressed, 8 << 20, &mut out, &mut |n| {
                asked = asked.max(n);
                Ok(())
            })
            .unwrap();
            assert_eq!(out, data, "{codec:?}");
            assert!(out.capacity() <= asked.max(data.len()), "{codec:?}");
            assert!(
                asked < 2 * data.len() + (1 << 16),
                "{codec:?} asked {asked}"
            );
            let mut out = Vec::new();
            let refused = decompress_within(codec, &compressed, 8 << 20, &mut out, &mut |n| {
                if n > 1 << 20 {
                    Err(OverBudget::Connection { cap: 1 << 20 })
                } else {
                    Ok(())
                }
            });
            assert!(
                matches!(refused, Err(DecompressError::Budget(_))),
                "{codec:?}"
            );
            assert!(out.capacity() <= 1 << 20, "{codec:?}");
        }
    }

    #[test]
    fn a_zstd_window_is_taken_from_the_budget_before_the_decoder_allocates_it() {
        // A frame declaring a 64 MiB window (long-distance matching), holding little data.
        let data = vec![1u8; 1 << 20];
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(26).unwrap();
        encoder.long_distance_matching(true).unwrap();
        encoder.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut encoder, &data).unwrap();
        let frame = encoder.finish().unwrap();
        assert_eq!(zstd_window(&frame), Some(64 << 20));
        let mut out = Vec::new();
        let mut asked = Vec::new();
        let refused = decompress_within(Compression::Zstd, &frame, 64 << 20, &mut out, &mut |n| {
            asked.push(n);
            if n > 32 << 20 {
                Err(OverBudget::Connection { cap: 32 << 20 })
            } else {
                Ok(())
            }
        });
        assert!(matches!(refused, Err(DecompressError::Budget(_))));
        assert_eq!(asked, [(64 << 20) + ZSTD_BUFFERS]);
        // What producers write (level 3, a window of the data's size or less) decodes, and
        // its window is counted.
        let mut small = BytesMut::new();
        compress(
            Compression::Zstd,
            &mut BytesMut::from(&data[..]),
            &mut small,
        )
        .unwrap();
        let window = zstd_window(&small).unwrap();
        assert!(window <= 2 << 20, "{window}");
        let mut asked = 0;
        decompress_within(Compression::Zstd, &small, 64 << 20, &mut out, &mut |n| {
            asked = asked.max(n);
            Ok(())
        })
        .unwrap();
        assert_eq!(out, data);
        assert!(asked >= window + data.len(), "{asked}");
    }

    #[test]
    fn codecs_come_from_the_attributes() {
        assert_eq!(codec(0x0013), Some(Compression::Lz4));
        assert_eq!(codec(0x0005), None);
        assert_eq!(window_log(64 << 20), 26);
        assert_eq!(window_log(1), 23);
        assert_eq!(window_log(usize::MAX), 27);
    }
}
