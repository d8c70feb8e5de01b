//! Strategies: how a sensitive text is rewritten once a field path or a detector picked it.
//!
//! Which strategies are idempotent (masking their output again changes nothing):
//!
//! - `Redact`: yes, the placeholder is replaced by itself;
//! - `Nullify`: yes, `null` is never masked;
//! - `KeepFirst`/`KeepLast`: yes, the kept characters stay and `*` stays `*` (a value no longer
//!   than `count` is masked whole, so `****` stays `****`);
//! - `Hmac`: yes, a value that already is a token of the same encoding (`hmac:` and 64 hex
//!   digits, or 43 base64url characters) is left as it is;
//! - `FormatPreserving`: no. Its output has the shape of real data by design, so it cannot be
//!   told apart from a value that still needs masking.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use streamward_api::config::{MaskStrategy, TokenEncoding};

type HmacSha256 = Hmac<Sha256>;

/// What an HMAC token starts with.
pub(crate) const TOKEN_PREFIX: &str = "hmac:";

/// Domain separation, so a FormatPreserving pseudonym and an HMAC token made with the same key
/// are unrelated.
const FORMAT_PRESERVING_DOMAIN: &[u8] = b"streamward/format-preserving\0";

/// A strategy ready to run: keys resolved, HMAC state keyed once.
#[derive(Clone)]
pub(crate) enum Strategy {
    Redact(Box<str>),
    Nullify,
    KeepFirst(usize),
    KeepLast(usize),
    Hmac {
        mac: HmacSha256,
        encoding: TokenEncoding,
    },
    FormatPreserving {
        mac: HmacSha256,
    },
}

impl std::fmt::Debug for Strategy {
    // Never prints keys (the HMAC state holds the key).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::Redact(placeholder) => write!(f, "Redact({placeholder:?})"),
            Strategy::Nullify => f.write_str("Nullify"),
            Strategy::KeepFirst(count) => write!(f, "KeepFirst({count})"),
            Strategy::KeepLast(count) => write!(f, "KeepLast({count})"),
            Strategy::Hmac { encoding, .. } => write!(f, "Hmac({encoding:?})"),
            Strategy::FormatPreserving { .. } => f.write_str("FormatPreserving"),
        }
    }
}

/// Why a strategy could not be built.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyProblem {
    Missing,
    Empty,
}

impl Strategy {
    /// Builds a strategy, fetching its key with `key` when it needs one.
    pub(crate) fn new<'k>(
        compiled: &MaskStrategy,
        key: impl FnOnce(&streamward_api::config::SecretKeyRef) -> Option<&'k [u8]>,
    ) -> Result<Strategy, KeyProblem> {
        let keyed = |secret| -> Result<HmacSha256, KeyProblem> {
            let bytes = key(secret).ok_or(KeyProblem::Missing)?;
            if bytes.is_empty() {
                return Err(KeyProblem::Empty);
            }
            // HMAC takes keys of any length; this cannot fail for a non-empty key.
            <HmacSha256 as KeyInit>::new_from_slice(bytes).map_err(|_| KeyProblem::Empty)
        };
        Ok(match compiled {
            MaskStrategy::Redact { placeholder } => Strategy::Redact(placeholder.as_str().into()),
            MaskStrategy::Nullify => Strategy::Nullify,
            MaskStrategy::KeepFirst { count } => Strategy::KeepFirst(*count as usize),
            MaskStrategy::KeepLast { count } => Strategy::KeepLast(*count as usize),
            MaskStrategy::Hmac {
                key_secret_ref,
                encoding,
            } => Strategy::Hmac {
                mac: keyed(key_secret_ref)?,
                encoding: *encoding,
            },
            MaskStrategy::FormatPreserving { key_secret_ref } => Strategy::FormatPreserving {
                mac: keyed(key_secret_ref)?,
            },
        })
    }

    /// Writes the masked form of `text` to `out`. `identity` is what keyed strategies hash
    /// (the text itself for fields; a normalised form for detector matches, so that the same
    /// card written with or without spaces gives the same token). `Nullify` writes nothing:
    /// callers decide what null means where they are (JSON `null`, a null header, removal).
    pub(crate) fn mask_text(&self, text: &str, identity: &[u8], out: &mut String) {
        match self {
            Strategy::Redact(placeholder) => out.push_str(placeholder),
            Strategy::Nullify => {}
            Strategy::KeepFirst(count) => keep(text, *count, true, out),
            Strategy::KeepLast(count) => keep(text, *count, false, out),
            Strategy::Hmac { mac, encoding } => {
                if is_token(text, *encoding) {
                    out.push_str(text);
                } else {
                    token(mac, identity, *encoding, out);
                }
            }
            Strategy::FormatPreserving { mac } => {
                let mut stream = KeyStream::new(mac, identity);
                for c in text.chars() {
                    out.push(stream.substitute(c));
                }
            }
        }
    }

    /// The masked form of a JSON number literal (`-12.5e3`) under `FormatPreserving`: every
    /// digit replaced, everything else kept, and still a valid JSON number (no leading zero).
    /// Returns `false` (writing nothing) for other strategies.
    pub(crate) fn mask_number(&self, literal: &str, out: &mut Vec<u8>) -> bool {
        let Strategy::FormatPreserving { mac } = self else {
            return false;
        };
        let mut stream = KeyStream::new(mac, literal.as_bytes());
        let bytes = literal.as_bytes();
        let int_start = usize::from(bytes.first() == Some(&b'-'));
        let int_len = bytes[int_start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        for (index, &b) in bytes.iter().enumerate() {
            if !b.is_ascii_digit() {
                out.push(b);
            } else if index == int_start && int_len > 1 {
                out.push(b'1' + (stream.next_u16() % 9) as u8);
            } else {
                out.push(b'0' + (stream.next_u16() % 10) as u8);
            }
        }
        true
    }

    /// The masked form of bytes that are not text (a binary header value): an HMAC token, or
    /// the placeholder for everything else (`****` unless the strategy is `Redact`).
    pub(crate) fn mask_bytes(&self, bytes: &[u8], out: &mut String) {
        match self {
            Strategy::Hmac { mac, encoding } => token(mac, bytes, *encoding, out),
            Strategy::Redact(placeholder) => out.push_str(placeholder),
            _ => out.push_str(streamward_api::config::DEFAULT_PLACEHOLDER),
        }
    }
}

/// `KeepFirst`/`KeepLast`: characters beyond the kept ones become `*`, the length (in
/// characters) stays. A text no longer than `count` is masked whole: keeping all of it would
/// mask nothing. The kept part is copied as one slice, not character by character.
fn keep(text: &str, count: usize, first: bool, out: &mut String) {
    let length = text.chars().count();
    if length <= count {
        push_stars(length, out);
        return;
    }
    let hidden = length - count;
    // The byte offset of character `n` (`n` < `length`).
    let offset = |n: usize| text.char_indices().nth(n).map_or(text.len(), |(at, _)| at);
    if first {
        out.push_str(&text[..offset(count)]);
        push_stars(hidden, out);
    } else {
        push_stars(hidden, out);
        out.push_str(&text[offset(hidden)..]);
    }
}

/// Appends `count` asterisks.
fn push_stars(mut count: usize, out: &mut String) {
    const STARS: &str = "********************************";
    out.reserve(count);
    while count > 0 {
        let now = count.min(STARS.len());
        out.push_str(&STARS[..now]);
        count -= now;
    }
}

/// `hmac:` and HMAC-SHA256(key, input).
fn token(mac: &HmacSha256, input: &[u8], encoding: TokenEncoding, out: &mut String) {
    let mut mac = mac.clone();
    mac.update(input);
    let tag = mac.finalize().into_bytes();
    out.push_str(TOKEN_PREFIX);
    match encoding {
        TokenEncoding::Hex => {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            for byte in tag.iter() {
                out.push(DIGITS[usize::from(byte >> 4)] as char);
                out.push(DIGITS[usize::from(byte & 0xf)] as char);
            }
        }
        TokenEncoding::Base64Url => URL_SAFE_NO_PAD.encode_string(tag, out),
    }
}

/// Whether `text` is already a token of `encoding`.
pub(crate) fn is_token(text: &str, encoding: TokenEncoding) -> bool {
    let Some(body) = text.strip_prefix(TOKEN_PREFIX) else {
        return false;
    };
    match encoding {
        TokenEncoding::Hex => {
            body.len() == 64 && body.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        TokenEncoding::Base64Url => {
            body.len() == 43
                && body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }
    }
}

/// The keyed pseudo-random stream FormatPreserving draws replacement characters from: block 0
/// is HMAC(key, domain ‖ input), block n is SHA-256(block 0 ‖ n). Deterministic for a key and
/// an input, unpredictable without the key.
struct KeyStream {
    seed: [u8; 32],
    block: [u8; 32],
    counter: u32,
    used: usize,
}

impl KeyStream {
    fn new(mac: &HmacSha256, input: &[u8]) -> KeyStream {
        let mut mac = mac.clone();
        mac.update(FORMAT_PRESERVING_DOMAIN);
        mac.update(input);
        let seed: [u8; 32] = mac.finalize().into_bytes().into();
        KeyStream {
            seed,
            block: seed,
            counter: 0,
            used: 0,
        }
    }

    fn next_u16(&mut self) -> u16 {
        if self.used + 2 > self.block.len() {
            self.counter += 1;
            let mut hasher = Sha256::new();
            hasher.update(self.seed);
            hasher.update(self.counter.to_be_bytes());
            self.block = hasher.finalize().into();
            self.used = 0;
        }
        let value = u16::from_be_bytes([self.block[self.used], self.block[self.used + 1]]);
        self.used += 2;
        value
    }

    /// Digits become digits, letters letters of the same case (ASCII, also for non-ASCII
    /// letters, which would otherwise survive), anything else stays.
    fn substitute(&mut self, c: char) -> char {
        if c.is_numeric() {
            char::from(b'0' + (self.next_u16() % 10) as u8)
        } else if c.is_alphabetic() {
            let base = if c.is_uppercase() { b'A' } else { b'a' };
            char::from(base + (self.next_u16() % 26) as u8)
        } else {
            c
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamward_api::config::SecretKeyRef;

    fn secret() -> SecretKeyRef {
        SecretKeyRef {
            name: "mask".into(),
            key: "k".into(),
        }
    }

    pub(crate) fn keyed(compiled: MaskStrategy) -> Strategy {
        Strategy::new(&compiled, |_| Some(b"0123456789abcdef".as_slice())).unwrap()
    }

    fn text(strategy: &Strategy, input: &str) -> String {
        let mut out = String::new();
        strategy.mask_text(input, input.as_bytes(), &mut out);
        out
    }

    fn hmac(encoding: TokenEncoding) -> Strategy {
        keyed(MaskStrategy::Hmac {
            key_secret_ref: secret(),
            encoding,
        })
    }

    fn format_preserving() -> Strategy {
        keyed(MaskStrategy::FormatPreserving {
            key_secret_ref: secret(),
        })
    }

    #[test]
    fn redact_writes_the_placeholder() {
        let redact = Strategy::Redact("[x]".into());
        assert_eq!(text(&redact, "secret"), "[x]");
        assert_eq!(text(&redact, "[x]"), "[x]");
        assert_eq!(text(&Strategy::Nullify, "secret"), "");
    }

    #[test]
    fn keep_first_and_last_keep_the_length_in_characters() {
        assert_eq!(
            text(&Strategy::KeepLast(4), "4111111111111111"),
            "************1111"
        );
        assert_eq!(text(&Strategy::KeepFirst(2), "Zoë Smith"), "Zo*******");
        assert_eq!(text(&Strategy::KeepLast(3), "ünïcödé"), "****ödé");
        assert_eq!(text(&Strategy::KeepLast(4), "1234"), "****");
        assert_eq!(text(&Strategy::KeepLast(4), "12"), "**");
        assert_eq!(text(&Strategy::KeepFirst(0), "abc"), "***");
        assert_eq!(text(&Strategy::KeepLast(4), ""), "");
        for masked in ["************1111", "****", "**"] {
            assert_eq!(text(&Strategy::KeepLast(4), masked), masked);
        }
        assert_eq!(text(&Strategy::KeepFirst(2), "Zo*******"), "Zo*******");
        // More asterisks than one chunk of them.
        let long = "é".repeat(40) + "1234";
        assert_eq!(text(&Strategy::KeepLast(4), &long), "*".repeat(40) + "1234");
        assert_eq!(
            text(&Strategy::KeepFirst(3), &long),
            "ééé".to_owned() + &"*".repeat(41)
        );
    }

    #[test]
    fn hmac_tokens_are_keyed_stable_and_idempotent() {
        let hex = hmac(TokenEncoding::Hex);
        let token = text(&hex, "alice@example.com");
        assert!(
            token.starts_with("hmac:") && token.len() == 5 + 64,
            "{token}"
        );
        assert_eq!(text(&hex, "alice@example.com"), token);
        assert_ne!(text(&hex, "bob@example.com"), token);
        assert_eq!(text(&hex, &token), token);
        // The same key in another plan instance gives the same token.
        assert_eq!(text(&hmac(TokenEncoding::Hex), "alice@example.com"), token);
        // Another key gives another token.
        let other = Strategy::new(
            &MaskStrategy::Hmac {
                key_secret_ref: secret(),
                encoding: TokenEncoding::Hex,
            },
            |_| Some(b"another key".as_slice()),
        )
        .unwrap();
        assert_ne!(text(&other, "alice@example.com"), token);
        // Known answer: HMAC-SHA256("0123456789abcdef", "abc").
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(b"abc");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(text(&hex, "abc"), format!("hmac:{expected}"));

        let b64 = hmac(TokenEncoding::Base64Url);
        let token = text(&b64, "alice@example.com");
        assert_eq!(token.len(), 5 + 43, "{token}");
        assert!(is_token(&token, TokenEncoding::Base64Url));
        assert_eq!(text(&b64, &token), token);
    }

    #[test]
    fn keys_are_required_and_never_empty() {
        let compiled = MaskStrategy::Hmac {
            key_secret_ref: secret(),
            encoding: TokenEncoding::Hex,
        };
        assert_eq!(
            Strategy::new(&compiled, |_| None).unwrap_err(),
            KeyProblem::Missing
        );
        assert_eq!(
            Strategy::new(&compiled, |_| Some(b"".as_slice())).unwrap_err(),
            KeyProblem::Empty
        );
        assert!(!format!("{:?}", hmac(TokenEncoding::Hex)).contains("0123"));
    }

    #[test]
    fn format_preserving_keeps_the_shape() {
        let fp = format_preserving();
        let input = "4111-1111 1111-1111 Ab.cD/é";
        let out = text(&fp, input);
        assert_eq!(out.chars().count(), input.chars().count());
        assert_ne!(out, input);
        for (a, b) in input.chars().zip(out.chars()) {
            assert_eq!(a.is_ascii_digit(), b.is_ascii_digit(), "{a} {b}");
            assert_eq!(a.is_alphabetic(), b.is_alphabetic(), "{a} {b}");
            assert_eq!(a.is_uppercase(), b.is_uppercase(), "{a} {b}");
            if !a.is_alphanumeric() {
                assert_eq!(a, b);
            }
        }
        assert_eq!(text(&format_preserving(), input), out, "deterministic");
        assert_ne!(
            text(&fp, "4111-1111 1111-1112"),
            text(&fp, "4111-1111 1111-1111")
        );
        // Long inputs draw more than one block of the key stream.
        let long = "9".repeat(100);
        let masked = text(&fp, &long);
        assert_eq!(masked.len(), 100);
        assert!(masked.bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn format_preserving_numbers_stay_valid_json_numbers() {
        let fp = format_preserving();
        for literal in ["0", "7", "-0.5", "12345", "-987.65e-12", "10E+3", "0.000"] {
            let mut out = Vec::new();
            assert!(fp.mask_number(literal, &mut out));
            let masked = String::from_utf8(out).unwrap();
            assert_eq!(masked.len(), literal.len());
            let value: serde_json::Value = serde_json::from_str(&masked).unwrap();
            assert!(value.is_number(), "{literal} -> {masked}");
        }
        assert!(!Strategy::Nullify.mask_number("1", &mut Vec::new()));
    }

    #[test]
    fn bytes_that_are_not_text_get_a_token_or_a_placeholder() {
        let mut out = String::new();
        hmac(TokenEncoding::Hex).mask_bytes(&[0xff, 0x00], &mut out);
        assert!(is_token(&out, TokenEncoding::Hex));
        out.clear();
        Strategy::KeepLast(2).mask_bytes(&[0xff, 0x00], &mut out);
        assert_eq!(out, "****");
    }
}
