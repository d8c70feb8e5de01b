//! Detectors: finding sensitive values inside text, with checks that keep false positives down
//! (Luhn for cards, mod-97 for IBANs, the SSA's rules for SSNs, a decodable header for JWTs).
//!
//! Every finder is hand-written over bytes except the custom regex: one pass, no allocation,
//! and a quick precondition on the text ([`TextFacts`]) that skips most strings without looking
//! at them twice. A match never starts or ends inside a word: the byte before and after it is
//! not an ASCII letter, digit or `_` (non-ASCII bytes count as boundaries, so more is masked
//! rather than less).

use std::ops::Range;

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use memchr::memmem;
use regex::Regex;
use streamward_api::config::DetectorType;

/// A detector ready to run.
#[derive(Clone, Debug)]
pub(crate) enum Finder {
    CreditCard,
    Email,
    Phone,
    Iban,
    UsSsn,
    Jwt,
    CloudAccessKey,
    /// A custom regex; with a group named `mask`, only that group is masked.
    Regex {
        regex: Regex,
        group: Option<usize>,
    },
}

/// What keyed strategies hash for a match, so equal values written differently give equal
/// tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Normalize {
    /// The match as it is.
    AsIs,
    /// Letters, digits and `+` only, letters in upper case (cards, phones, IBANs, SSNs).
    Alphanumeric,
    /// Lower case (emails).
    Lowercase,
}

/// Cheap facts about a text, gathered in one pass, that tell most detectors they cannot match.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TextFacts {
    len: usize,
    digits: usize,
    /// The [`CLASS`] bits of every byte, or-ed.
    classes: u8,
}

const UPPER: u8 = 1;
const AT: u8 = 2;
const DOT: u8 = 4;
const CAPITAL_A: u8 = 8;

/// Byte classes for [`TextFacts`], for the bytes after the last whole word.
static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut c = b'A';
    while c <= b'Z' {
        table[c as usize] = UPPER;
        c += 1;
    }
    table[b'A' as usize] = UPPER | CAPITAL_A;
    table[b'@' as usize] = AT;
    table[b'.' as usize] = DOT;
    table
};

impl TextFacts {
    /// Eight bytes at a time (SWAR), the tail through [`CLASS`]: a table lookup per byte was
    /// most of the detectors' time on the short strings of JSON values.
    pub(crate) fn of(text: &[u8]) -> TextFacts {
        const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);
        const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
        // With the high bits cleared no byte carries into the next, so the high bit of each
        // byte of `at_least(c)` is set exactly when that byte (of `y`) is `c` or more.
        let at_least = |y: u64, c: u8| y + u64::from_ne_bytes([0x80 - c; 8]);
        let mut digits = 0;
        let mut classes = 0;
        let mut words = text.chunks_exact(8);
        for chunk in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let x = u64::from_le_bytes(word);
            // ASCII bytes only: a byte with its high bit set is in no class.
            let y = x & LOW7;
            let ascii = !x & HIGH;
            let between = |low: u8, high: u8| at_least(y, low) & !at_least(y, high + 1) & ascii;
            digits += between(b'0', b'9').count_ones() as usize;
            let flag = |bits: u64, class: u8| if bits != 0 { class } else { 0 };
            classes |= flag(between(b'A', b'Z'), UPPER)
                | flag(between(b'@', b'@'), AT)
                | flag(between(b'.', b'.'), DOT)
                | flag(between(b'A', b'A'), CAPITAL_A);
        }
        for &b in words.remainder() {
            digits += usize::from(b.wrapping_sub(b'0') < 10);
            classes |= CLASS[usize::from(b)];
        }
        TextFacts {
            len: text.len(),
            digits,
            classes,
        }
    }

    fn has(&self, class: u8) -> bool {
        self.classes & class != 0
    }
}

impl Finder {
    /// The finder for a detector type (`pattern` for `Regex`, already validated by the
    /// compiler; built again here with the same limits).
    pub(crate) fn new(detector: DetectorType, pattern: Option<&str>) -> Result<Finder, String> {
        Ok(match detector {
            DetectorType::CreditCard => Finder::CreditCard,
            DetectorType::Email => Finder::Email,
            DetectorType::Phone => Finder::Phone,
            DetectorType::Iban => Finder::Iban,
            DetectorType::UsSsn => Finder::UsSsn,
            DetectorType::Jwt => Finder::Jwt,
            DetectorType::CloudAccessKey => Finder::CloudAccessKey,
            DetectorType::Regex => {
                let pattern = pattern.ok_or("a Regex detector without a pattern")?;
                let regex = streamward_api::masking::detector_regex(pattern)?;
                let group = regex.capture_names().position(|name| name == Some("mask"));
                Finder::Regex { regex, group }
            }
        })
    }

    /// Whether the finder could match a text with these facts. `false` means it cannot.
    pub(crate) fn may_match(&self, facts: &TextFacts) -> bool {
        facts.len >= self.min_len()
            && match self {
                Finder::CreditCard => facts.digits >= 13,
                Finder::Email => facts.has(AT) && facts.has(DOT),
                Finder::Phone => facts.digits >= 8,
                Finder::Iban => facts.has(UPPER) && facts.digits >= 2,
                Finder::UsSsn => facts.digits >= 9,
                Finder::Jwt => facts.has(DOT),
                Finder::CloudAccessKey => facts.has(CAPITAL_A),
                Finder::Regex { .. } => true,
            }
    }

    /// The shortest text the finder can match, in bytes.
    pub(crate) fn min_len(&self) -> usize {
        match self {
            Finder::CreditCard => 13,
            Finder::Email => 6,
            Finder::Phone => 9,
            Finder::Iban => 15,
            Finder::UsSsn => 11,
            Finder::Jwt => 12,
            Finder::CloudAccessKey => 20,
            Finder::Regex { .. } => 1,
        }
    }

    pub(crate) fn normalize(&self) -> Normalize {
        match self {
            Finder::CreditCard | Finder::Phone | Finder::Iban | Finder::UsSsn => {
                Normalize::Alphanumeric
            }
            Finder::Email => Normalize::Lowercase,
            Finder::Jwt | Finder::CloudAccessKey | Finder::Regex { .. } => Normalize::AsIs,
        }
    }

    /// The first match that starts at or after `from` (a char boundary of `text`), as a byte
    /// range on char boundaries.
    pub(crate) fn find(&self, text: &str, from: usize) -> Option<Range<usize>> {
        let bytes = text.as_bytes();
        match self {
            Finder::CreditCard => find_card(bytes, from),
            Finder::Email => find_email(bytes, from),
            Finder::Phone => find_phone(bytes, from),
            Finder::Iban => find_iban(bytes, from),
            Finder::UsSsn => find_ssn(bytes, from),
            Finder::Jwt => find_jwt(bytes, from),
            Finder::CloudAccessKey => find_cloud_key(bytes, from),
            Finder::Regex { regex, group } => find_regex(regex, *group, text, from),
        }
    }
}

/// Writes what keyed strategies hash for `matched` into `out`.
pub(crate) fn normalized<'t>(
    normalize: Normalize,
    matched: &'t str,
    out: &'t mut String,
) -> &'t str {
    match normalize {
        Normalize::AsIs => matched,
        Normalize::Alphanumeric => {
            out.clear();
            out.extend(
                matched
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
                    .map(|c| c.to_ascii_uppercase()),
            );
            out
        }
        Normalize::Lowercase => {
            out.clear();
            out.push_str(matched);
            out.make_ascii_lowercase();
            out
        }
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether position `at` may start a match: the byte before is not part of a word.
fn starts_word(bytes: &[u8], at: usize) -> bool {
    at == 0 || !is_word(bytes[at - 1])
}

/// Whether position `at` may end a match: the byte there is not part of a word.
fn ends_word(bytes: &[u8], at: usize) -> bool {
    bytes.get(at).is_none_or(|&b| !is_word(b))
}

/// Whether the text before `at` continues an identifier (`ORD-123…`, `v1.2…`), in which case
/// a number starting at `at` is a piece of it rather than a value of its own.
fn continues_identifier(bytes: &[u8], at: usize) -> bool {
    at >= 2 && matches!(bytes[at - 1], b'-' | b'.' | b'/' | b'_') && is_word(bytes[at - 2])
}

fn next_digit(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .iter()
        .position(u8::is_ascii_digit)
        .map(|offset| from + offset)
}

/// Credit cards: 13–19 digits, single spaces or dashes between groups, first digit 2–6 (Visa,
/// Mastercard, Amex, Discover, JCB, UnionPay, Diners), Luhn-valid.
fn find_card(bytes: &[u8], from: usize) -> Option<Range<usize>> {
    let mut at = from;
    while let Some(start) = next_digit(bytes, at) {
        let mut digits = [0u8; 19];
        let mut count = 0;
        let mut end = start;
        let mut i = start;
        let mut separator = None;
        let mut mixed = false;
        while i < bytes.len() {
            let b = bytes[i];
            if b.is_ascii_digit() {
                if count < digits.len() {
                    digits[count] = b - b'0';
                }
                count += 1;
                i += 1;
                end = i;
            } else if (b == b' ' || b == b'-')
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                && count > 0
            {
                mixed |= separator.is_some_and(|s| s != b);
                separator = Some(b);
                i += 1;
            } else {
                break;
            }
        }
        let candidate = (13..=19).contains(&count)
            && !mixed
            && (2..=6).contains(&digits[0])
            && starts_word(bytes, start)
            && ends_word(bytes, end)
            && luhn(&digits[..count]);
        if candidate {
            return Some(start..end);
        }
        at = end.max(start + 1);
    }
    None
}

/// The Luhn checksum: doubling every second digit from the right, the sum is a multiple of 10.
pub(crate) fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, &d)| {
            let d = u32::from(d);
            if index % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn is_local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// Emails: `local@domain.tld` with a practical local part (`[A-Za-z0-9._%+-]`), domain labels
/// of letters, digits and inner dashes, and a top-level domain starting with two or more
/// letters; word characters right after the address belong to the match.
fn find_email(bytes: &[u8], from: usize) -> Option<Range<usize>> {
    let mut search = from;
    while let Some(offset) = memchr::memchr(b'@', bytes.get(search..)?) {
        let at = search + offset;
        search = at + 1;
        let mut start = at;
        while start > from && is_local_char(bytes[start - 1]) {
            start -= 1;
        }
        while start < at && bytes[start] == b'.' {
            start += 1;
        }
        if start == at || bytes[at - 1] == b'.' {
            continue;
        }
        // Domain labels.
        let mut i = at + 1;
        let mut labels = 0;
        let mut end = at + 1;
        let mut last_label = at + 1..at + 1;
        loop {
            let label_start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-') {
                i += 1;
            }
            // A label never ends with a hyphen: one after it is punctuation
            // (`write to a@example.com- or call`), not part of the address.
            while i > label_start && bytes[i - 1] == b'-' {
                i -= 1;
            }
            if i == label_start || bytes[label_start] == b'-' {
                break;
            }
            labels += 1;
            end = i;
            last_label = label_start..i;
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_alphanumeric() {
                i += 1;
            } else {
                break;
            }
        }
        // The top-level domain: the last label's leading letters. An address glued to more
        // word characters (`…@example.com2`, `…@example.com_x`, found by the fuzzer) is still
        // an address, so the match takes the whole token: missing it would leak it.
        let tld_letters = bytes[last_label]
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        if labels >= 2 && tld_letters >= 2 {
            while end < bytes.len() && is_word(bytes[end]) {
                end += 1;
            }
            return Some(start..end);
        }
    }
    None
}

/// Phone numbers, conservatively: `+` and 8–15 digits in up to six groups (E.164 and its
/// usual spellings); North American `(415) 555-2671`, `415-555-2671`, `415.555.2671`,
/// `1-415-555-2671` (area code and exchange starting with 2–9); national numbers with a trunk `0` (`020 7946 0958`, `06 12 34 56 78`,
/// `0151 12345678`) written with spaces or dashes. Bare digit strings are not phone numbers.
fn find_phone(bytes: &[u8], from: usize) -> Option<Range<usize>> {
    let mut at = from;
    while at < bytes.len() {
        let start = at
            + bytes[at..]
                .iter()
                .position(|&b| b.is_ascii_digit() || b == b'+' || b == b'(')?;
        let run = PhoneRun::scan(bytes, start);
        let end = run.end;
        if run.is_phone()
            && starts_word(bytes, start)
            && (start == 0 || bytes[start - 1] != b'+')
            && !continues_identifier(bytes, start)
            && ends_word(bytes, end)
        {
            return Some(start..end);
        }
        at = end.max(start + 1);
    }
    None
}

/// A run of phone-like characters: digit groups separated by one space, dash or dot, the
/// first group possibly in parentheses.
struct PhoneRun {
    end: usize,
    plus: bool,
    groups: [u8; 8],
    group_count: usize,
    digits: usize,
    first_digits: [u8; 2],
    /// The first digit of each group.
    firsts: [u8; 8],
    dots: bool,
    parens: bool,
    valid: bool,
}

impl PhoneRun {
    fn scan(bytes: &[u8], start: usize) -> PhoneRun {
        let mut run = PhoneRun {
            end: start,
            plus: bytes[start] == b'+',
            groups: [0; 8],
            group_count: 0,
            digits: 0,
            first_digits: [0; 2],
            firsts: [0; 8],
            dots: false,
            parens: false,
            valid: true,
        };
        let mut i = start + usize::from(run.plus);
        loop {
            // One group: optional `(`, digits, `)` if opened.
            let open = bytes.get(i) == Some(&b'(');
            if open {
                if run.group_count > 1 {
                    run.valid = false;
                    break;
                }
                run.parens = true;
                i += 1;
            }
            let digits_start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                if run.digits < 2 {
                    run.first_digits[run.digits] = bytes[i] - b'0';
                }
                run.digits += 1;
                i += 1;
            }
            let length = i - digits_start;
            if length == 0 || run.group_count == run.groups.len() || run.digits > 15 {
                run.valid = false;
                break;
            }
            if open {
                if bytes.get(i) != Some(&b')') {
                    run.valid = false;
                    break;
                }
                i += 1;
            }
            run.groups[run.group_count] = length as u8;
            run.firsts[run.group_count] = bytes[digits_start] - b'0';
            run.group_count += 1;
            run.end = i;
            // A separator, if a digit (or `(`) follows it.
            let mut next = i;
            match bytes.get(i) {
                Some(b' ' | b'-') => next += 1,
                Some(b'.') => {
                    run.dots = true;
                    next += 1;
                }
                _ => {}
            }
            if open && next == i {
                // `(555)123-4567`: no separator after the parentheses is fine.
            } else if next == i {
                break;
            }
            if !bytes
                .get(next)
                .is_some_and(|&b| b.is_ascii_digit() || b == b'(')
            {
                break;
            }
            i = next;
        }
        if !run.valid {
            // Skip past whatever was scanned.
            run.end = run.end.max(i);
        }
        run
    }

    fn is_phone(&self) -> bool {
        if !self.valid || self.group_count == 0 {
            return false;
        }
        let groups = &self.groups[..self.group_count];
        if self.plus {
            return (8..=15).contains(&self.digits)
                && self.first_digits[0] != 0
                && self.group_count <= 6;
        }
        // North American area codes and exchanges start with 2–9.
        let nanp = |first: usize| {
            (2..=9).contains(&self.firsts[first]) && (2..=9).contains(&self.firsts[first + 1])
        };
        match groups {
            [3, 3, 4] => nanp(0),
            [1, 3, 3, 4] => self.firsts[0] == 1 && nanp(1),
            _ => {
                self.first_digits[0] == 0
                    && self.first_digits[1] != 0
                    && (10..=12).contains(&self.digits)
                    && groups.len() >= 2
                    && groups.iter().all(|&g| (2..=8).contains(&g))
                    && !self.dots
            }
        }
    }
}

/// IBAN lengths by country (SWIFT IBAN registry).
fn iban_length(country: [u8; 2]) -> Option<usize> {
    Some(match &country {
        b"NO" => 15,
        b"BE" => 16,
        b"DK" | b"FI" | b"FO" | b"GL" | b"NL" | b"SD" => 18,
        b"MK" | b"SI" => 19,
        b"AT" | b"BA" | b"EE" | b"KZ" | b"LT" | b"LU" | b"XK" | b"MN" => 20,
        b"CH" | b"HR" | b"LI" | b"LV" => 21,
        b"BG" | b"BH" | b"CR" | b"DE" | b"GB" | b"GE" | b"IE" | b"ME" | b"RS" | b"VA" => 22,
        b"AE" | b"GI" | b"IL" | b"IQ" | b"TL" | b"OM" | b"SO" => 23,
        b"AD" | b"CZ" | b"ES" | b"MD" | b"PK" | b"RO" | b"SA" | b"SE" | b"SK" | b"TN" | b"VG" => 24,
        b"LY" | b"PT" | b"ST" => 25,
        b"IS" | b"TR" => 26,
        b"FR" | b"GR" | b"IT" | b"MC" | b"MR" | b"SM" | b"BI" | b"DJ" => 27,
        b"AL" | b"AZ" | b"BY" | b"CY" | b"DO" | b"GT" | b"HU" | b"LB" | b"PL" | b"SV" | b"NI" => 28,
        b"BR" | b"EG" | b"PS" | b"QA" | b"UA" => 29,
        b"JO" | b"KW" | b"MU" | b"YE" => 30,
        b"MT" | b"SC" => 31,
        b"LC" => 32,
        b"RU" => 33,
        _ => return None,
    })
}

/// IBANs: country code, two check digits and the country's BBAN length of letters and digits,
/// optionally in groups of four separated by single spaces; mod-97 checksum equal to 1.
fn find_iban(bytes: &[u8], from: usize) -> Option<Range<usize>> {
    let mut at = from;
    while at + 4 <= bytes.len() {
        let start = at + bytes[at..].iter().position(u8::is_ascii_uppercase)?;
        at = start + 1;
        if start + 4 > bytes.len()
            || !bytes[start + 1].is_ascii_uppercase()
            || !bytes[start + 2].is_ascii_digit()
            || !bytes[start + 3].is_ascii_digit()
            || !starts_word(bytes, start)
        {
            continue;
        }
        let Some(length) = iban_length([bytes[start], bytes[start + 1]]) else {
            continue;
        };
        let mut chars = [0u8; 34];
        chars[..4].copy_from_slice(&bytes[start..start + 4]);
        let mut count = 4;
        let mut i = start + 4;
        while count < length && i < bytes.len() {
            let b = bytes[i];
            if b.is_ascii_digit() || b.is_ascii_uppercase() {
                chars[count] = b;
                count += 1;
                i += 1;
            } else if b == b' '
                && count.is_multiple_of(4)
                && bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphanumeric())
            {
                i += 1;
            } else {
                break;
            }
        }
        if count == length && ends_word(bytes, i) && iban_checksum(&chars[..length]) {
            return Some(start..i);
        }
    }
    None
}

/// ISO 7064 mod 97-10: the first four characters moved to the end, letters as 10–35, the
/// number modulo 97 is 1.
pub(crate) fn iban_checksum(iban: &[u8]) -> bool {
    let rotated = iban[4..].iter().chain(&iban[..4]);
    let mut remainder = 0u32;
    for &c in rotated {
        let value = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// US SSNs: `AAA-GG-SSSS` or `AAA GG SSSS` (the same separator twice), area not 000, 666 or
/// 900–999, group not 00, serial not 0000. Nine bare digits are not taken for an SSN.
fn find_ssn(bytes: &[u8], from: usize) -> Option<Range<usize>> {
    let mut at = from;
    while let Some(start) = next_digit(bytes, at) {
        at = start + 1;
        let end = start + 11;
        if end > bytes.len() || !starts_word(bytes, start) || continues_identifier(bytes, start) {
            // Skip the rest of this digit run.
            while at < bytes.len() && bytes[at].is_ascii_digit() {
                at += 1;
            }
            continue;
        }
        let s = &bytes[start..end];
        let separator = s[3];
        let shaped = (separator == b'-' || separator == b' ')
            && s[6] == separator
            && s[..3].iter().all(u8::is_ascii_digit)
            && s[4..6].iter().all(u8::is_ascii_digit)
            && s[7..].iter().all(u8::is_ascii_digit);
        // Not followed by more of the same (`123-45-6789-1`).
        let followed = bytes.get(end).is_some_and(|&b| {
            is_word(b)
                || ((b == b'-' || b == b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit))
        });
        if shaped && !followed {
            let number = |d: &[u8]| d.iter().fold(0u32, |n, &b| n * 10 + u32::from(b - b'0'));
            let (area, group, serial) = (number(&s[..3]), number(&s[4..6]), number(&s[7..]));
            if area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 {
                return Some(start..end);
            }
        }
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            at += 1;
        }
    }
    None
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// base64url with or without padding, tolerant of non-zero trailing bits (JWT libraries vary).
const LENIENT_BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Longest JWT header decoded to check it.
const MAX_JWT_HEADER: usize = 4096;

/// JWTs: three (JWS) or five (JWE) base64url segments separated by dots, the first starting
/// with `eyJ` (`{"`) and decoding to a JSON object with a string `alg`. The signature may be
/// empty (`alg: none`).
fn find_jwt(bytes: &[u8], from: usize) -> Option<Range<usize>> {
    let finder = memmem::Finder::new(b"eyJ");
    let mut at = from;
    while let Some(offset) = finder.find(bytes.get(at..)?) {
        let start = at + offset;
        at = start + 1;
        if start > 0 && (is_base64url(bytes[start - 1]) || bytes[start - 1] == b'.') {
            continue;
        }
        let segment_end = |from: usize| {
            from + bytes[from..]
                .iter()
                .take_while(|&&b| is_base64url(b))
                .count()
        };
        let mut ends = [0usize; 5];
        let mut count = 0;
        let mut i = start;
        loop {
            let end = segment_end(i);
            ends[count] = end;
            count += 1;
            // The header and the payload (and a JWE's key, iv and ciphertext) are not empty.
            if end == i && count < 3 {
                break;
            }
            if count == 5 || bytes.get(end) != Some(&b'.') {
                break;
            }
            i = end + 1;
        }
        let end = ends[count - 1];
        let well_formed = (count == 3 || count == 5)
            && ends[..count - 1].iter().all(|&e| e > start)
            && bytes
                .get(end)
                .is_none_or(|&b| !is_base64url(b) && b != b'.');
        if well_formed && jwt_header_has_alg(&bytes[start..ends[0]]) {
            return Some(start..end);
        }
        at = at.max(end);
    }
    None
}

fn jwt_header_has_alg(segment: &[u8]) -> bool {
    if segment.len() > MAX_JWT_HEADER {
        return false;
    }
    let Ok(header) = LENIENT_BASE64URL.decode(segment) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&header)
        .is_ok_and(|header| header.get("alg").is_some_and(serde_json::Value::is_string))
}

/// Cloud credentials: AWS access key ids (`AKIA`/`ASIA` and 16 upper-case letters or digits),
/// Google API keys (`AIza` and 35 base64url characters) and the key of an Azure storage
/// connection string (the value of `AccountKey=`, 20 or more base64 characters).
fn find_cloud_key(bytes: &[u8], from: usize) -> Option<Range<usize>> {
    let mut at = from;
    while let Some(offset) = memchr::memchr(b'A', bytes.get(at..)?) {
        let start = at + offset;
        at = start + 1;
        let rest = &bytes[start..];
        if !starts_word(bytes, start) {
            continue;
        }
        if (rest.starts_with(b"AKIA") || rest.starts_with(b"ASIA"))
            && rest.len() >= 20
            && rest[4..20]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && ends_word(bytes, start + 20)
        {
            return Some(start..start + 20);
        }
        if rest.starts_with(b"AIza")
            && rest.len() >= 39
            && rest[4..39].iter().all(|&b| is_base64url(b))
            && bytes.get(start + 39).is_none_or(|&b| !is_base64url(b))
        {
            return Some(start..start + 39);
        }
        if let Some(key) = rest.strip_prefix(b"AccountKey=") {
            let body = key
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'+' || **b == b'/')
                .count();
            let padding = key[body..]
                .iter()
                .take(2)
                .take_while(|&&b| b == b'=')
                .count();
            if body >= 20 {
                let value = start + "AccountKey=".len();
                return Some(value..value + body + padding);
            }
        }
    }
    None
}

fn find_regex(
    regex: &Regex,
    group: Option<usize>,
    text: &str,
    from: usize,
) -> Option<Range<usize>> {
    let mut at = from;
    loop {
        if at > text.len() {
            return None;
        }
        let range = match group {
            None => regex.find_at(text, at)?.range(),
            Some(group) => {
                let mut locations = regex.capture_locations();
                let whole = regex.captures_read_at(&mut locations, text, at)?;
                match locations.get(group) {
                    Some((start, end)) if start < end => start..end,
                    // The group did not take part, or matched nothing: look further.
                    _ => {
                        at = next_char(text, whole.end().max(whole.start() + 1));
                        continue;
                    }
                }
            }
        };
        if range.is_empty() {
            // The compiler refuses patterns that can match nothing; never loop on one anyway.
            at = next_char(text, range.end + 1);
            continue;
        }
        return Some(range);
    }
}

/// The first char boundary of `text` at or after `at` (or one past the end).
fn next_char(text: &str, mut at: usize) -> usize {
    while at < text.len() && !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(finder: &Finder, text: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut from = 0;
        while let Some(range) = finder.find(text, from) {
            assert!(range.start >= from && range.end > range.start);
            found.push(text[range.clone()].to_owned());
            from = range.end;
        }
        found
    }

    fn finds(finder: &Finder, text: &str, expected: &[&str]) {
        assert_eq!(all(finder, text), expected, "in {text:?}");
        if !expected.is_empty() {
            assert!(
                finder.may_match(&TextFacts::of(text.as_bytes())),
                "facts rule out {text:?}"
            );
        }
    }

    #[test]
    fn credit_cards_need_the_luhn_check() {
        let card = Finder::CreditCard;
        for number in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5500 0000 0000 0004",
            "378282246310005",
            "3782 822463 10005",
            "6011111111111117",
            "4222222222222",
            "2223003122003222",
            "6200000000000005",
        ] {
            finds(&card, &format!("card: {number}."), &[number]);
            finds(&card, number, &[number]);
        }
        finds(
            &card,
            "a 4111111111111111 and 5500-0000-0000-0004!",
            &["4111111111111111", "5500-0000-0000-0004"],
        );
        for not_a_card in [
            "4111111111111112",        // Luhn fails
            "4111 1111 1111 1112",     // Luhn fails
            "1234567812345670",        // Luhn ok, no card starts with 1
            "7111111111111119",        // nor 7
            "411111111111",            // 12 digits
            "41111111111111111111111", // 23 digits
            "x4111111111111111",       // inside a word
            "4111111111111111x",
            "4111 1111-1111 1111",  // mixed separators
            "4111  1111 1111 1111", // double space
            "1700000000000",        // a timestamp in milliseconds
            "2024-01-15T10:00:00Z",
        ] {
            finds(&card, not_a_card, &[]);
        }
    }

    #[test]
    fn text_facts_see_every_byte() {
        // Each byte alone, then at every position of a longer text (the loop may be
        // vectorized: no lane may be missed).
        for b in 0..=255u8 {
            let facts = TextFacts::of(&[b]);
            assert_eq!(facts.digits, usize::from(b.is_ascii_digit()), "{b:#x}");
            assert_eq!(facts.has(UPPER), b.is_ascii_uppercase(), "{b:#x}");
            assert_eq!(facts.has(AT), b == b'@', "{b:#x}");
            assert_eq!(facts.has(DOT), b == b'.', "{b:#x}");
            assert_eq!(facts.has(CAPITAL_A), b == b'A', "{b:#x}");
        }
        for len in [1, 7, 8, 15, 16, 31, 32, 33, 64, 100] {
            for at in 0..len {
                for b in [b'@', b'.', b'A', b'Q'] {
                    let mut text = vec![b'x'; len];
                    text[at] = b;
                    let facts = TextFacts::of(&text);
                    assert_eq!(facts.classes, TextFacts::of(&[b]).classes, "{len} {at}");
                }
                let mut text = vec![0xC3u8; len];
                text[at] = b'7';
                assert_eq!(TextFacts::of(&text).digits, 1);
                assert_eq!(TextFacts::of(&vec![b'9'; len]).digits, len);
            }
        }
    }

    /// The byte-by-byte computation the word-at-a-time one replaces.
    fn facts_slowly(text: &[u8]) -> TextFacts {
        TextFacts {
            len: text.len(),
            digits: text.iter().filter(|b| b.is_ascii_digit()).count(),
            classes: text
                .iter()
                .fold(0, |classes, &b| classes | CLASS[usize::from(b)]),
        }
    }

    #[test]
    fn text_facts_match_the_byte_by_byte_computation() {
        // Every byte value at every position of one and two words and a tail, after fills
        // on both sides of the bit tricks' edges (bytes with the high bit set, next to the
        // classes' bounds).
        let fills = [
            b'x', b'0', b'9', b'/', b':', b'@', b'?', b'[', 0x7f, 0x80, 0xc3, 0xff,
        ];
        for fill in fills {
            for len in [8, 11, 16, 19] {
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut text = vec![fill; len];
                        text[at] = b;
                        let (fast, slow) = (TextFacts::of(&text), facts_slowly(&text));
                        assert_eq!(
                            (fast.len, fast.digits, fast.classes),
                            (slow.len, slow.digits, slow.classes),
                            "fill {fill:#x} len {len} byte {b:#x} at {at}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn luhn_known_answers() {
        let digits = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
        assert!(luhn(&digits("79927398713")));
        assert!(!luhn(&digits("79927398710")));
        assert!(luhn(&digits("0")));
    }

    #[test]
    fn emails() {
        let email = Finder::Email;
        for address in [
            "alice@example.com",
            "Alice.Smith+tag@mail.example.co.uk",
            "a_b-c%d@sub-domain.example.org",
            "x@y.io",
        ] {
            finds(&email, &format!("mail <{address}>, thanks"), &[address]);
        }
        finds(
            &email,
            "end of sentence: bob@example.com.",
            &["bob@example.com"],
        );
        finds(&email, "a@b.co;c@d.org", &["a@b.co", "c@d.org"]);
        // Found by the fuzzer: a dash right after the address hid it.
        finds(
            &email,
            "shipped to leak.me@example.com- card",
            &["leak.me@example.com"],
        );
        // Found by the fuzzer: word characters glued to the address hid it; the whole token
        // is masked.
        finds(
            &email,
            "to leak.me@example.com2 and x@example.org_b.",
            &["leak.me@example.com2", "x@example.org_b"],
        );
        for not_an_email in [
            "@example.com",
            "alice@",
            "alice@localhost",
            "alice@example.c",
            "alice@example.123",
            "user@-example.com",
            "user.@example.com",
            "price @ 5.00",
            "a@@b.com",
            "twitter: @handle.x",
        ] {
            finds(&email, not_an_email, &[]);
        }
        finds(&email, ".alice@example.com", &["alice@example.com"]);
    }

    #[test]
    fn phones_are_conservative() {
        let phone = Finder::Phone;
        for number in [
            "+14155552671",
            "+1 415 555 2671",
            "+44 20 7946 0958",
            "+49-30-1234567",
            "+33 6 12 34 56 78",
            "(415) 555-2671",
            "(415)555-2671",
            "415-555-2671",
            "415.555.2671",
            "415 555 2671",
            "1-415-555-2671",
            "020 7946 0958",
            "06 12 34 56 78",
            "0151 12345678",
            "030-1234-5678",
        ] {
            finds(&phone, &format!("call {number} now"), &[number]);
            finds(&phone, number, &[number]);
        }
        for not_a_phone in [
            "12345678901",         // bare digits
            "0123456789",          // bare digits with a trunk zero
            "2024-01-15",          // a date
            "10:30:00",            // a time
            "192.168.100.200",     // an address
            "4111 1111 1111 1111", // a card
            "123-45-6789",         // an SSN
            "+1234",               // too short
            "+12345678901234567",  // too long
            "155-234-5678",        // no area code starts with 1
            "555-023-4567",        // nor exchange with 0 or 1
            "555-123-4567",
            "ORD-0123-4567-89", // a piece of an identifier
            "v06.12.34.56.78",  // a version
            "06.12.34.56.78",   // dotted trunk numbers are too ambiguous
            "3.14159 2.71828",
            "415-555-2671x",
            "price 1,234,567.89",
        ] {
            finds(&phone, not_a_phone, &[]);
        }
        finds(
            &phone,
            "home: 415-555-2671, work: +44 20 7946 0958",
            &["415-555-2671", "+44 20 7946 0958"],
        );
    }

    #[test]
    fn ibans_need_their_length_and_checksum() {
        let iban = Finder::Iban;
        for valid in [
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "BE68539007547034",
            "CH9300762011623852957",
            "ES9121000418450200051332",
            "IT60X0542811101000000123456",
            "NO9386011117947",
        ] {
            finds(&iban, &format!("IBAN: {valid} EUR"), &[valid]);
        }
        for invalid in [
            "DE89370400440532013001",       // checksum
            "DE8937040044053201300",        // too short for DE
            "DE893704004405320130000",      // too long for DE
            "XX89370400440532013000",       // no such country
            "de89370400440532013000",       // lower case
            "ADE89370400440532013000",      // inside a word
            "DE89 3704 0044 0532 0130 001", // runs on
        ] {
            finds(&iban, invalid, &[]);
        }
        assert!(iban_checksum(b"GB82WEST12345698765432"));
        assert!(!iban_checksum(b"GB82WEST12345698765433"));
    }

    #[test]
    fn us_ssns_follow_the_ssa_rules() {
        let ssn = Finder::UsSsn;
        for valid in ["123-45-6789", "123 45 6789", "899-99-9999", "001-01-0001"] {
            finds(&ssn, &format!("SSN {valid}."), &[valid]);
        }
        for invalid in [
            "000-12-3456", // area 000
            "666-12-3456", // area 666
            "900-12-3456", // area 9xx
            "999-12-3456",
            "123-00-4567",  // group 00
            "123-45-0000",  // serial 0000
            "123456789",    // bare digits
            "123-45 6789",  // mixed separators
            "1123-45-6789", // too many digits
            "123-45-67890",
            "123-45-6789-1",
            "A123-45-6789",
            "x-123-45-6789",
        ] {
            finds(&ssn, invalid, &[]);
        }
    }

    const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    #[test]
    fn jwts_need_a_header_with_alg() {
        let jwt = Finder::Jwt;
        finds(&jwt, JWT, &[JWT]);
        finds(&jwt, &format!("Authorization: Bearer {JWT}"), &[JWT]);
        // alg none: empty signature.
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
        finds(&jwt, &format!("t={unsigned} "), &[unsigned]);
        // A header without alg, or not JSON.
        finds(&jwt, "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.c2ln", &[]);
        finds(&jwt, "eyJub3QganNvbg.eyJzdWIiOiJ4In0.c2ln", &[]);
        // Two segments, or glued to a word.
        finds(&jwt, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0", &[]);
        finds(&jwt, &format!("x{JWT}"), &[]);
        finds(&jwt, "eyJ.eyJ.eyJ.eyJ", &[]);
    }

    #[test]
    fn cloud_keys() {
        let keys = Finder::CloudAccessKey;
        finds(
            &keys,
            "aws_access_key_id=AKIAIOSFODNN7EXAMPLE",
            &["AKIAIOSFODNN7EXAMPLE"],
        );
        finds(&keys, "ASIAY34FZKBOKMUTVV7A", &["ASIAY34FZKBOKMUTVV7A"]);
        let gcp = "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI";
        finds(&keys, &format!("key={gcp}&q=1"), &[gcp]);
        let azure_key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
        finds(
            &keys,
            &format!(
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={azure_key};EndpointSuffix=core.windows.net"
            ),
            &[azure_key],
        );
        for not_a_key in [
            "AKIAIOSFODNN7EXAMPL",   // 19 characters
            "AKIAIOSFODNN7EXAMPLEX", // 21
            "AKIAiosfodnn7example",  // lower case
            "XAKIAIOSFODNN7EXAMPLE",
            "AIzaShort",
            "AccountKey=short",
            "AKIA",
        ] {
            finds(&keys, not_a_key, &[]);
        }
    }

    #[test]
    fn regexes_mask_the_whole_match_or_the_mask_group() {
        let plain = Finder::new(DetectorType::Regex, Some(r"EMP-\d{6}")).unwrap();
        finds(
            &plain,
            "ids EMP-123456, EMP-654321",
            &["EMP-123456", "EMP-654321"],
        );
        let grouped =
            Finder::new(DetectorType::Regex, Some(r"password=(?P<mask>[^&\s]+)")).unwrap();
        finds(&grouped, "user=a&password=hunter2&x=1", &["hunter2"]);
        let optional = Finder::new(DetectorType::Regex, Some(r"token(?::(?P<mask>\w+))?")).unwrap();
        finds(&optional, "token token:abc", &["abc"]);
        assert!(Finder::new(DetectorType::Regex, Some("(")).is_err());
        assert!(Finder::new(DetectorType::Regex, None).is_err());
        let unicode = Finder::new(DetectorType::Regex, Some(r"é+")).unwrap();
        finds(&unicode, "aéébé", &["éé", "é"]);
    }

    #[test]
    fn matches_are_normalized_for_keyed_strategies() {
        let mut scratch = String::new();
        assert_eq!(
            normalized(Normalize::Alphanumeric, "4111-1111 1111-1111", &mut scratch),
            "4111111111111111"
        );
        assert_eq!(
            normalized(Normalize::Alphanumeric, "+44 (20) 7946-0958", &mut scratch),
            "+442079460958"
        );
        assert_eq!(
            normalized(Normalize::Lowercase, "Alice@Example.COM", &mut scratch),
            "alice@example.com"
        );
        assert_eq!(
            normalized(Normalize::Lowercase, "Zoë@Exämple.COM", &mut scratch),
            "zoë@exämple.com",
            "only ASCII letters are folded"
        );
        assert_eq!(normalized(Normalize::AsIs, "X y", &mut scratch), "X y");
    }

    #[test]
    fn finders_never_panic_on_odd_text() {
        let finders = [
            Finder::CreditCard,
            Finder::Email,
            Finder::Phone,
            Finder::Iban,
            Finder::UsSsn,
            Finder::Jwt,
            Finder::CloudAccessKey,
        ];
        for text in [
            "",
            "+",
            "(",
            "((((",
            "+(",
            "@",
            "@.",
            "a@b.",
            "eyJ",
            "eyJ.",
            "eyJ..",
            "A",
            "AKIA",
            "DE",
            "DE8",
            "123-",
            "123-45-",
            "1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0",
            "é@é.é",
            "AccountKey=",
            "(555",
            "(555)",
            "+1 (555) (555)",
        ] {
            for finder in &finders {
                let _ = all(finder, text);
            }
        }
    }
}
