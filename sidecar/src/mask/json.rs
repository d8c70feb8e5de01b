//! Masking JSON in one pass, without building a tree.
//!
//! A strict RFC 8259 scanner walks the value once. The bytes between masked leaves are copied
//! as they are (nothing is re-serialized), and a masked leaf is replaced by a valid JSON token,
//! so the result keeps every key, every array length and the formatting of the input, and is
//! valid JSON. Nothing is written until the first leaf changes; a value with nothing to mask
//! costs one scan and no allocation.
//!
//! Field paths are matched while walking: each path is a small automaton whose progress at
//! every open container is a 64-bit set of "steps matched so far"; a container no path can
//! reach any more is walked without looking at its keys.

use streamward_api::config::DEFAULT_PLACEHOLDER;
use streamward_api::masking::Step;

use super::detect::{Normalize, TextFacts, normalized};
use super::plan::{DetectorMask, Detectors, JsonStage};
use super::strategy::Strategy;

/// Deepest nesting accepted (as serde_json's default); deeper values fail to parse.
const MAX_DEPTH: usize = 128;

/// The value is not JSON (or nests deeper than [`MAX_DEPTH`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParseError;

/// Buffers reused from value to value.
#[derive(Default)]
pub(crate) struct JsonScratch {
    /// Path automaton states, one slot of `fields.len()` words per open container (and one
    /// for the value being read).
    states: Vec<u64>,
    frames: Vec<Frame>,
    unescaped: String,
    key: String,
    texts: [String; 2],
    token: String,
    normal: String,
    leaf: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Frame {
    array: bool,
    /// Elements read so far (arrays).
    index: usize,
    /// The field whose path selected this container: every leaf inside is masked by it.
    mask: Option<u16>,
    /// Whether some path may still select something inside.
    live: bool,
}

/// What the next value is, for the path automata.
enum Child<'k> {
    Member(&'k [u8]),
    Element(usize),
}

/// What kind of leaf a field path selected.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaf {
    String,
    Number,
    Bool,
}

/// Copies the input to `out`, replacing spans; writes nothing until the first replacement.
struct Rewriter<'a> {
    input: &'a [u8],
    out: &'a mut Vec<u8>,
    copied: usize,
    changed: bool,
}

impl Rewriter<'_> {
    /// Replaces `input[start..end]` by `with`, unless it is equal already. Returns whether
    /// anything changed.
    fn replace(&mut self, start: usize, end: usize, with: &[u8]) -> bool {
        if self.input[start..end] == *with {
            return false;
        }
        if !self.changed {
            self.out.clear();
            self.out.reserve(self.input.len() + 64);
            self.changed = true;
        }
        self.out.extend_from_slice(&self.input[self.copied..start]);
        self.out.extend_from_slice(with);
        self.copied = end;
        true
    }

    fn finish(self) -> bool {
        if self.changed {
            self.out.extend_from_slice(&self.input[self.copied..]);
        }
        self.changed
    }
}

/// Masks the JSON `input` with `stage`. Returns how many leaves (and detector matches) were
/// masked; when that is not 0, `out` holds the whole masked value. `ParseError` when `input`
/// is not JSON; `out` is then garbage.
pub(crate) fn mask_json(
    stage: &JsonStage,
    input: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut JsonScratch,
) -> Result<u32, ParseError> {
    let text = std::str::from_utf8(input).map_err(|_| ParseError)?;
    let b = input;
    let JsonScratch {
        states,
        frames,
        unescaped,
        key,
        texts,
        token,
        normal,
        leaf,
    } = scratch;
    let fields = &stage.fields;
    let paths = fields.len();
    let mut writer = Rewriter {
        input,
        out,
        copied: 0,
        changed: false,
    };
    let mut masked = 0u32;
    frames.clear();
    states.clear();

    // The root: every path at step 0; a path with no steps (`$`) selects the whole value.
    let mut mask: Option<u16> = None;
    let mut live = false;
    states.resize(paths, 0);
    for (index, field) in fields.iter().enumerate() {
        if field.steps.is_empty() {
            mask.get_or_insert(index as u16);
        } else {
            states[index] = 1;
            live = true;
        }
    }
    live &= mask.is_none();

    let mut i = skip_ws(b, 0);
    'value: loop {
        // A value starts at `i`; `mask` and `live` say how paths see it, and its automaton
        // states are in slot `frames.len()`.
        let Some(&c) = b.get(i) else {
            return Err(ParseError);
        };
        match c {
            b'{' | b'[' => {
                if frames.len() >= MAX_DEPTH {
                    return Err(ParseError);
                }
                let array = c == b'[';
                frames.push(Frame {
                    array,
                    index: 0,
                    mask,
                    live,
                });
                i = skip_ws(b, i + 1);
                let close = if array { b']' } else { b'}' };
                if b.get(i) == Some(&close) {
                    frames.pop();
                    i += 1;
                } else if array {
                    (mask, live) = enter(stage, states, frames, Child::Element(0), opens(b, i));
                    continue 'value;
                } else {
                    let (after, span) = read_key(b, text, i, key)?;
                    let name = span.map_or(key.as_bytes(), |(start, end)| &b[start..end]);
                    (mask, live) =
                        enter(stage, states, frames, Child::Member(name), opens(b, after));
                    i = after;
                    continue 'value;
                }
            }
            b'"' => {
                let (end, escaped) = scan_string(b, i)?;
                let raw = &text[i + 1..end - 1];
                let content = if escaped {
                    unescape(raw, unescaped)?;
                    unescaped.as_str()
                } else {
                    raw
                };
                if let Some(field) = mask {
                    let strategy = &fields[usize::from(field)].strategy;
                    leaf_token(strategy, Leaf::String, content, token, leaf);
                    masked += u32::from(writer.replace(i, end, leaf));
                } else if !stage.detectors.is_empty() {
                    match mask_text_with(&stage.detectors, content, texts, normal, true) {
                        Some((0, _)) => {}
                        None => {
                            // A Nullify detector matched: the whole string becomes null.
                            masked += u32::from(writer.replace(i, end, b"null"));
                        }
                        Some((count, index)) => {
                            leaf.clear();
                            write_json_string(&texts[index], leaf);
                            if writer.replace(i, end, leaf) {
                                masked += count;
                            }
                        }
                    }
                }
                i = end;
            }
            b'-' | b'0'..=b'9' => {
                let end = scan_number(b, i)?;
                let literal = &text[i..end];
                let strategy = match mask {
                    Some(field) => Some(&fields[usize::from(field)].strategy),
                    None => whole_match(&stage.detectors, literal),
                };
                if let Some(strategy) = strategy {
                    leaf_token(strategy, Leaf::Number, literal, token, leaf);
                    masked += u32::from(writer.replace(i, end, leaf));
                }
                i = end;
            }
            b't' | b'f' | b'n' => {
                let literal: &[u8] = match c {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !b[i..].starts_with(literal) {
                    return Err(ParseError);
                }
                let end = i + literal.len();
                // null has nothing to hide.
                if let (Some(field), false) = (mask, c == b'n') {
                    let strategy = &fields[usize::from(field)].strategy;
                    leaf_token(strategy, Leaf::Bool, &text[i..end], token, leaf);
                    masked += u32::from(writer.replace(i, end, leaf));
                }
                i = end;
            }
            _ => return Err(ParseError),
        }

        // After a value: a separator, or the end of containers.
        loop {
            i = skip_ws(b, i);
            let Some(frame) = frames.last_mut() else {
                if i != b.len() {
                    return Err(ParseError);
                }
                break 'value;
            };
            match b.get(i) {
                Some(b',') => {
                    i = skip_ws(b, i + 1);
                    if frame.array {
                        frame.index += 1;
                        let index = frame.index;
                        (mask, live) =
                            enter(stage, states, frames, Child::Element(index), opens(b, i));
                    } else {
                        let (after, span) = read_key(b, text, i, key)?;
                        let name = span.map_or(key.as_bytes(), |(start, end)| &b[start..end]);
                        (mask, live) =
                            enter(stage, states, frames, Child::Member(name), opens(b, after));
                        i = after;
                    }
                    continue 'value;
                }
                Some(b']') if frame.array => {
                    frames.pop();
                    i += 1;
                }
                Some(b'}') if !frame.array => {
                    frames.pop();
                    i += 1;
                }
                _ => return Err(ParseError),
            }
        }
    }
    writer.finish();
    Ok(masked)
}

/// Reads `"key" :` at `i` (which holds the opening quote). Returns the position of the value
/// after the colon, and the key's content: a span of the input, or (when it has escapes)
/// `None` with the decoded name in `key`.
fn read_key(
    b: &[u8],
    text: &str,
    i: usize,
    key: &mut String,
) -> Result<(usize, Option<(usize, usize)>), ParseError> {
    if b.get(i) != Some(&b'"') {
        return Err(ParseError);
    }
    let (end, escaped) = scan_string(b, i)?;
    let span = if escaped {
        unescape(&text[i + 1..end - 1], key)?;
        None
    } else {
        Some((i + 1, end - 1))
    };
    let colon = skip_ws(b, end);
    if b.get(colon) != Some(&b':') {
        return Err(ParseError);
    }
    Ok((skip_ws(b, colon + 1), span))
}

/// Whether the value at `i` is an object or an array (and so has children whose paths matter).
#[inline]
fn opens(b: &[u8], i: usize) -> bool {
    #[cfg(test)]
    if EVERY_CHILD_A_CONTAINER.with(std::cell::Cell::get) {
        return true;
    }
    matches!(b.get(i), Some(b'{' | b'['))
}

#[cfg(test)]
thread_local! {
    /// Tests compare the leaf shortcut of [`enter`] with the full computation.
    pub(super) static EVERY_CHILD_A_CONTAINER: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

/// Computes the path states of a child of the innermost open container into the next slot,
/// and returns how the child is seen: the field masking it whole, if any, and whether some path
/// may still select something inside it. A child that is not a `container` (most are leaves)
/// only needs the first: its states would never be read, so they are not computed.
///
/// Most children are decided here without looking at the paths (inlined into the scanner's
/// loop); the rest in [`enter_paths`].
#[inline(always)]
fn enter(
    stage: &JsonStage,
    states: &mut Vec<u64>,
    frames: &[Frame],
    child: Child<'_>,
    container: bool,
) -> (Option<u16>, bool) {
    let Some(parent) = frames.last() else {
        return (None, false);
    };
    if parent.mask.is_some() || !parent.live {
        return (parent.mask, false);
    }
    let summary = &stage.selectors;
    let can_advance = match child {
        Child::Member(name) => summary.wildcards || summary.may_name(name),
        Child::Element(_) => summary.wildcards || summary.indices,
    };
    if !container && !can_advance {
        // No path's last step can select this leaf.
        return (None, false);
    }
    enter_paths(stage, states, frames, child, container, can_advance)
}

#[inline(never)]
fn enter_paths(
    stage: &JsonStage,
    states: &mut Vec<u64>,
    frames: &[Frame],
    child: Child<'_>,
    container: bool,
    can_advance: bool,
) -> (Option<u16>, bool) {
    let fields = &stage.fields;
    let depth = frames.len();
    let paths = fields.len();
    let hit = |step: &Step| match &child {
        Child::Member(name) => step.selector.matches_member(name),
        Child::Element(index) => step.selector.matches_element(*index),
    };
    if !container {
        // A leaf is selected when a path's last step is active and matches it; the first such
        // path masks it, as below.
        let parent_states = &states[(depth - 1) * paths..depth * paths];
        let pairs = fields.iter().zip(parent_states.iter());
        for (index, (field, &parent)) in pairs.enumerate() {
            let Some(last) = field.steps.len().checked_sub(1) else {
                continue;
            };
            if parent & (1 << last) != 0 && hit(&field.steps[last]) {
                return (Some(index as u16), false);
            }
        }
        return (None, false);
    }
    if states.len() < (depth + 1) * paths {
        states.resize((depth + 1) * paths, 0);
    }
    let (before, after) = states.split_at_mut(depth * paths);
    let parent_states = &before[(depth - 1) * paths..];
    let child_states = &mut after[..paths];
    let mut mask = None;
    let mut live = false;
    if !can_advance {
        // No selector matches this child: only descendant steps carry on.
        for ((field, &parent), slot) in fields.iter().zip(parent_states).zip(child_states) {
            *slot = parent & field.descendants;
            live |= *slot != 0;
        }
        return (None, live);
    }
    let pairs = fields.iter().zip(parent_states).zip(child_states);
    for (index, ((field, &parent), slot)) in pairs.enumerate() {
        // Descendant steps stay active; every active step whose selector matches advances.
        let mut next = parent & field.descendants;
        let mut bits = parent & !field.done;
        while bits != 0 {
            let k = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Some(step) = field.steps.get(k) else {
                break;
            };
            if hit(step) {
                next |= 1 << (k + 1);
            }
        }
        *slot = next;
        if next & field.done != 0 {
            mask = mask.or(Some(index as u16));
        }
        live |= next & !field.done != 0;
    }
    (mask, live && mask.is_none())
}

/// The JSON token replacing a leaf a field path selected.
fn leaf_token(
    strategy: &Strategy,
    kind: Leaf,
    content: &str,
    token: &mut String,
    leaf: &mut Vec<u8>,
) {
    leaf.clear();
    match (strategy, kind) {
        (Strategy::Nullify, _) => leaf.extend_from_slice(b"null"),
        (Strategy::FormatPreserving { .. }, Leaf::Number) => {
            strategy.mask_number(content, leaf);
        }
        // A pseudonym of a boolean would keep one bit of it: redact it instead.
        (Strategy::FormatPreserving { .. }, Leaf::Bool) => {
            write_json_string(DEFAULT_PLACEHOLDER, leaf);
        }
        _ => {
            token.clear();
            strategy.mask_text(content, content.as_bytes(), token);
            write_json_string(token, leaf);
        }
    }
}

/// The strategy of the first detector matching the whole number literal, if any: a card
/// number written as a JSON number is masked like one written as a string.
fn whole_match<'d>(detectors: &'d [DetectorMask], literal: &str) -> Option<&'d Strategy> {
    if detectors.is_empty() {
        return None;
    }
    let facts = TextFacts::of(literal.as_bytes());
    detectors
        .iter()
        .find(|d| d.finder.may_match(&facts) && d.finder.find(literal, 0) == Some(0..literal.len()))
        .map(|d| &d.strategy)
}

/// Runs `detectors` over `content`, each on the previous one's output. Returns the number of
/// matches masked and which of `texts` holds the result (when the number is not 0), or `None`
/// when `null_on_nullify` and a `Nullify` detector matched. Without `null_on_nullify`,
/// `Nullify` removes the match.
pub(crate) fn mask_text_with(
    detectors: &Detectors,
    content: &str,
    texts: &mut [String; 2],
    normal: &mut String,
    null_on_nullify: bool,
) -> Option<(u32, usize)> {
    let [first, second] = texts;
    let (mut current, mut next) = (first, second);
    let mut index = 0;
    let mut in_buffer = false;
    let mut total = 0u32;
    // Most strings are too short for any detector: skip them without looking at their bytes.
    if content.len() < detectors.min_len() {
        return Some((0, 0));
    }
    let mut facts = TextFacts::of(content.as_bytes());
    for detector in detectors.iter() {
        if !detector.finder.may_match(&facts) {
            continue;
        }
        let source: &str = if in_buffer { current } else { content };
        let mut from = 0;
        let mut copied = 0;
        let mut count = 0u32;
        while let Some(range) = detector.finder.find(source, from) {
            if null_on_nullify && matches!(detector.strategy, Strategy::Nullify) {
                return None;
            }
            if count == 0 {
                next.clear();
            }
            next.push_str(&source[copied..range.start]);
            let matched = &source[range.clone()];
            let identity = match detector.finder.normalize() {
                Normalize::AsIs => matched,
                how => normalized(how, matched, normal),
            };
            detector
                .strategy
                .mask_text(matched, identity.as_bytes(), next);
            copied = range.end;
            from = range.end;
            count += 1;
        }
        if count > 0 {
            next.push_str(&source[copied..]);
            std::mem::swap(&mut current, &mut next);
            index ^= 1;
            in_buffer = true;
            total += count;
            facts = TextFacts::of(current.as_bytes());
        }
    }
    Some((total, index))
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Bytes that end the fast part of a string scan: `"`, `\` and control characters.
static STRING_SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = true;
        c += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The first position at or after `j` holding a [`STRING_SPECIAL`] byte (or `b.len()`).
///
/// Eight bytes at a time (SWAR): string contents are mostly plain, and a byte-by-byte loop
/// was the largest part of scanning. In each word, a byte's high bit is set in `found` when it
/// is `"`, `\` or below 0x20; a borrow can set bits only above a byte that really matched, so
/// the lowest set bit is exact.
#[inline]
fn skip_plain(b: &[u8], mut j: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const SPACE: u64 = u64::from_ne_bytes([0x20; 8]);
    const QUOTE: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASH: u64 = u64::from_ne_bytes([b'\\'; 8]);
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    while let Some(chunk) = b.get(j..j + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        // Little-endian order, so the first byte in memory is the lowest one.
        let x = u64::from_le_bytes(word);
        let found =
            zero_byte(x ^ QUOTE) | zero_byte(x ^ BACKSLASH) | (x.wrapping_sub(SPACE) & !x & HIGH);
        if found != 0 {
            return j + (found.trailing_zeros() / 8) as usize;
        }
        j += 8;
    }
    while j < b.len() && !STRING_SPECIAL[usize::from(b[j])] {
        j += 1;
    }
    j
}

/// Scans the string starting at `i` (its opening quote). Returns the position after the
/// closing quote and whether it has escapes.
fn scan_string(b: &[u8], i: usize) -> Result<(usize, bool), ParseError> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j = skip_plain(b, j);
        match b.get(j) {
            Some(b'"') => return Ok((j + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                match b.get(j + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                    Some(b'u') => {
                        let hex = b.get(j + 2..j + 6).ok_or(ParseError)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(ParseError);
                        }
                        j += 6;
                    }
                    _ => return Err(ParseError),
                }
            }
            _ => return Err(ParseError),
        }
    }
}

/// Decodes the escapes of a string's raw content (already checked by [`scan_string`]). A lone
/// surrogate is an error, as in serde_json: it has no UTF-8 form.
fn unescape(raw: &str, out: &mut String) -> Result<(), ParseError> {
    out.clear();
    let b = raw.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    while let Some(offset) = memchr::memchr(b'\\', &b[i..]) {
        let at = i + offset;
        out.push_str(&raw[copied..at]);
        let escape = *b.get(at + 1).ok_or(ParseError)?;
        i = at + 2;
        match escape {
            b'"' => out.push('"'),
            b'\\' => out.push('\\'),
            b'/' => out.push('/'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'u' => {
                let unit = hex4(raw, at + 2)?;
                i = at + 6;
                let code = match unit {
                    0xD800..=0xDBFF => {
                        if raw.get(i..i + 2) != Some("\\u") {
                            return Err(ParseError);
                        }
                        let low = hex4(raw, i + 2)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(ParseError);
                        }
                        i += 6;
                        0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(ParseError),
                    unit => u32::from(unit),
                };
                out.push(char::from_u32(code).ok_or(ParseError)?);
            }
            _ => return Err(ParseError),
        }
        copied = i;
    }
    out.push_str(&raw[copied..]);
    Ok(())
}

fn hex4(raw: &str, at: usize) -> Result<u16, ParseError> {
    let digits = raw.get(at..at + 4).ok_or(ParseError)?;
    u16::from_str_radix(digits, 16).map_err(|_| ParseError)
}

/// Scans the number starting at `i`; returns where it ends.
fn scan_number(b: &[u8], i: usize) -> Result<usize, ParseError> {
    let digits = |mut j: usize| {
        let start = j;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        if j == start { Err(ParseError) } else { Ok(j) }
    };
    let mut j = i + usize::from(b[i] == b'-');
    j = match b.get(j) {
        Some(b'0') => j + 1,
        Some(b'1'..=b'9') => digits(j)?,
        _ => return Err(ParseError),
    };
    if b.get(j) == Some(&b'.') {
        j = digits(j + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(j) {
        j += 1;
        if let Some(b'+' | b'-') = b.get(j) {
            j += 1;
        }
        j = digits(j)?;
    }
    Ok(j)
}

/// Writes `s` as a JSON string (escaping as serde_json does).
pub(crate) fn write_json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut copied = 0;
    // The bytes to escape are the ones that end a plain run when scanning.
    let mut i = skip_plain(bytes, 0);
    while let Some(&c) = bytes.get(i) {
        let escape: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            _ => b"",
        };
        out.extend_from_slice(&bytes[copied..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        copied = i + 1;
        i = skip_plain(bytes, i + 1);
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte scan `skip_plain` replaces.
    fn skip_plain_slowly(b: &[u8], mut j: usize) -> usize {
        while j < b.len() && !STRING_SPECIAL[usize::from(b[j])] {
            j += 1;
        }
        j
    }

    #[test]
    fn json_strings_are_escaped_as_serde_json_escapes_them() {
        let mut every_char: String = (0..=0x7fu8).map(char::from).collect();
        every_char.push_str("é 😀 \u{2028} plain text after the escapes \"\\");
        let mut out = Vec::new();
        for text in [
            every_char.as_str(),
            "",
            "plain",
            "\"",
            "12345678\n",
            "\u{1f}x",
        ] {
            out.clear();
            write_json_string(text, &mut out);
            assert_eq!(out, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn skip_plain_stops_at_the_first_special_byte() {
        // Every byte value at every offset of words and tails, after plain bytes of both halves
        // of the byte range (0x7f, 0x80 and 0xff are near the bit tricks' edges).
        for fill in [b'a', 0x7f, 0x80, 0xff, 0x20, 0x21, 0x5d] {
            for len in 1..=20 {
                for at in 0..len {
                    for special in 0..=255u8 {
                        let mut text = vec![fill; len];
                        text[at] = special;
                        for from in 0..=at.min(3) {
                            assert_eq!(
                                skip_plain(&text, from),
                                skip_plain_slowly(&text, from),
                                "fill {fill:#x} len {len} byte {special:#x} at {at} from {from}"
                            );
                        }
                    }
                }
            }
        }
        // Two specials in one word: the first one wins, whatever follows (borrows).
        for first in [0u8, 0x1f, b'"', b'\\'] {
            for second in [0u8, 0x01, 0x1f, b'"', b'\\'] {
                for at in 0..7 {
                    let mut text = [b'x'; 8];
                    text[at] = first;
                    text[at + 1] = second;
                    assert_eq!(skip_plain(&text, 0), at);
                }
            }
        }
    }
}
