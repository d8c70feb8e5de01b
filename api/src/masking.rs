//! The masking vocabulary the compiler and the proxy share: field paths into JSON values and the
//! way detector regexes are built. Both sides parse with the same code and the same limits, so
//! a `MaskingRule` that compiles is one every proxy can turn into a masking plan.
//!
//! # Field paths
//!
//! A subset of JSONPath (RFC 9535) that names fields rather than computing with them:
//!
//! | form | selects |
//! |---|---|
//! | `$` | the whole value (every leaf in it) |
//! | `a.b.c` or `$.a.b.c` | member `c` of member `b` of member `a` of the root object |
//! | `items[*].card`, `items.*.card` | member `card` of every element (or member) of `items` |
//! | `items[0]` | the first element of the array `items` |
//! | `['first name']`, `["a.b"]` | a member whose name is not a plain word |
//! | `..email`, `a..email` | member `email` at any depth (below `a`) |
//! | `..*`, `..[*]` | everything at any depth |
//!
//! A bare name is any run of characters other than `.`, `[`, `]`, `*`, quotes and whitespace.
//! Paths are strict as in JSONPath: `items.card` does not look inside the array `items`;
//! write `items[*].card` (or `..card`). When a path selects an object or an array, every leaf
//! inside it is masked.

use std::fmt;
use std::str::FromStr;

/// Most steps a field path may have (the proxy tracks each path's progress in a 64-bit set).
pub const MAX_PATH_STEPS: usize = 32;

/// Longest field path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// Longest detector regex, in bytes.
pub const MAX_PATTERN_LEN: usize = 4096;

/// Heap the compiled program of one detector regex may use.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Memory the lazy DFA of one detector regex may use, per matcher.
const REGEX_DFA_SIZE_LIMIT: usize = 2 << 20;

/// Deepest nesting of groups and repetitions in a detector regex.
const REGEX_NEST_LIMIT: u32 = 64;

/// A parsed field path. A `FieldPath` that exists is valid: it has at most
/// [`MAX_PATH_STEPS`] steps and every name is non-empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldPath {
    steps: Vec<Step>,
}

/// One step of a [`FieldPath`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Step {
    /// `..`: the selector may match at any depth below the current node, not only one level.
    pub descendant: bool,
    /// What the step matches.
    pub selector: Selector,
}

/// What a [`Step`] matches among the children of a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// The object member with this name.
    Name(String),
    /// The array element at this position (from 0).
    Index(usize),
    /// Every member of an object and every element of an array.
    Wildcard,
}

impl Selector {
    /// Whether the selector matches the object member `name`.
    #[inline]
    pub fn matches_member(&self, name: &[u8]) -> bool {
        match self {
            // Length and first byte first: most keys differ there, without a call to memcmp.
            Selector::Name(wanted) => {
                let wanted = wanted.as_bytes();
                wanted.len() == name.len() && wanted.first() == name.first() && wanted == name
            }
            Selector::Index(_) => false,
            Selector::Wildcard => true,
        }
    }

    /// Whether the selector matches the array element at `index`.
    #[inline]
    pub fn matches_element(&self, index: usize) -> bool {
        match self {
            Selector::Name(_) => false,
            Selector::Index(wanted) => *wanted == index,
            Selector::Wildcard => true,
        }
    }
}

/// Why a field path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at byte {position}: {reason}")]
pub struct PathError {
    /// Where in the path the problem is (byte offset).
    pub position: usize,
    /// What is wrong there.
    pub reason: &'static str,
}

impl FieldPath {
    /// Parses a field path (see the module documentation for the forms).
    pub fn parse(path: &str) -> Result<FieldPath, PathError> {
        let error = |position, reason| Err(PathError { position, reason });
        if path.is_empty() {
            return error(0, "the path is empty; write a path like customer.email");
        }
        if path.len() > MAX_PATH_LEN {
            return error(MAX_PATH_LEN, "the path is longer than 1024 bytes");
        }
        let bytes = path.as_bytes();
        let mut pos = 0;
        let mut steps = Vec::new();
        if bytes[0] == b'$' {
            pos = 1;
        } else if bytes[0] != b'.' && bytes[0] != b'[' {
            // A path may start with a bare name: `a.b` is `$.a.b`.
            let (selector, next) = bare(path, pos)?;
            steps.push(Step {
                descendant: false,
                selector,
            });
            pos = next;
        }
        while pos < bytes.len() {
            let (descendant, start) = if path[pos..].starts_with("..") {
                (true, pos + 2)
            } else if bytes[pos] == b'.' {
                (false, pos + 1)
            } else if bytes[pos] == b'[' {
                (false, pos)
            } else {
                return error(pos, "expected `.`, `..` or `[` between steps");
            };
            let (selector, next) = match bytes.get(start) {
                None => return error(start, "the path ends after a `.`; name a field or `*`"),
                Some(b'[') if descendant || start == pos => bracket(path, start)?,
                Some(b'[') => return error(start, "write `a[0]` or `a['b']`, not `a.[...]`"),
                Some(b'.') => return error(start, "three dots in a row"),
                Some(_) => bare(path, start)?,
            };
            steps.push(Step {
                descendant,
                selector,
            });
            pos = next;
        }
        if steps.len() > MAX_PATH_STEPS {
            return error(0, "the path has more than 32 steps");
        }
        Ok(FieldPath { steps })
    }

    /// The steps, from the root down. Empty for `$` (the whole value).
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
}

/// A bare name or `*` at `start`: up to the next `.` or `[`.
fn bare(path: &str, start: usize) -> Result<(Selector, usize), PathError> {
    let rest = &path[start..];
    let end = rest.find(['.', '[']).unwrap_or(rest.len());
    let name = &rest[..end];
    if name == "*" {
        return Ok((Selector::Wildcard, start + end));
    }
    if let Some(offset) = name.find(|c: char| !is_bare_char(c)) {
        return Err(PathError {
            position: start + offset,
            reason: "a bare field name cannot contain `]`, `*`, quotes or whitespace; quote it \
                     like ['first name']",
        });
    }
    if name.is_empty() {
        return Err(PathError {
            position: start,
            reason: "an empty field name",
        });
    }
    Ok((Selector::Name(name.to_owned()), start + end))
}

fn is_bare_char(c: char) -> bool {
    !matches!(c, '.' | '[' | ']' | '*' | '\'' | '"' | '\\') && !c.is_whitespace()
}

/// `[*]`, `[N]` or `['name']` / `["name"]` at `start` (which holds `[`).
fn bracket(path: &str, start: usize) -> Result<(Selector, usize), PathError> {
    let bytes = path.as_bytes();
    let inner = start + 1;
    let error = |position, reason| Err(PathError { position, reason });
    match bytes.get(inner) {
        Some(b'*') => {
            if bytes.get(inner + 1) != Some(&b']') {
                return error(inner + 1, "expected `]` after `[*`");
            }
            Ok((Selector::Wildcard, inner + 2))
        }
        Some(b'0'..=b'9') => {
            let digits = path[inner..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(path.len() - inner);
            if bytes.get(inner + digits) != Some(&b']') {
                return error(inner + digits, "expected `]` after an array index");
            }
            if digits > 1 && bytes[inner] == b'0' {
                return error(inner, "an array index has no leading zeros");
            }
            let Ok(index) = path[inner..inner + digits].parse::<usize>() else {
                return error(inner, "the array index is too large");
            };
            Ok((Selector::Index(index), inner + digits + 1))
        }
        Some(&quote @ (b'\'' | b'"')) => {
            let mut name = String::new();
            let mut chars = path[inner + 1..].char_indices();
            while let Some((offset, c)) = chars.next() {
                let at = inner + 1 + offset;
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped @ ('\\' | '\'' | '"'))) => name.push(escaped),
                        _ => return error(at, "only \\\\, \\' and \\\" are escapes in a name"),
                    },
                    c if c as u32 == u32::from(quote) => {
                        if bytes.get(at + 1) != Some(&b']') {
                            return error(at + 1, "expected `]` after a quoted name");
                        }
                        if name.is_empty() {
                            return error(inner, "an empty field name");
                        }
                        return Ok((Selector::Name(name), at + 2));
                    }
                    c => name.push(c),
                }
            }
            error(inner, "the quoted name is not closed")
        }
        _ => error(inner, "expected `*`, an index or a quoted name after `[`"),
    }
}

impl fmt::Display for FieldPath {
    /// The canonical form: `$` then `.name`, `['quoted name']`, `[N]`, `[*]`, with `..` for
    /// descendant steps. Parsing it gives the same path back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for step in &self.steps {
            if step.descendant {
                f.write_str("..")?;
            }
            match &step.selector {
                Selector::Name(name) if name.chars().all(is_bare_char) => {
                    if !step.descendant {
                        f.write_str(".")?;
                    }
                    f.write_str(name)?;
                }
                Selector::Name(name) => {
                    f.write_str("['")?;
                    for c in name.chars() {
                        if matches!(c, '\\' | '\'') {
                            f.write_str("\\")?;
                        }
                        write!(f, "{c}")?;
                    }
                    f.write_str("']")?;
                }
                Selector::Index(index) => write!(f, "[{index}]")?,
                Selector::Wildcard if step.descendant => f.write_str("*")?,
                Selector::Wildcard => f.write_str("[*]")?,
            }
        }
        Ok(())
    }
}

impl FromStr for FieldPath {
    type Err = PathError;
    fn from_str(path: &str) -> Result<Self, Self::Err> {
        FieldPath::parse(path)
    }
}

/// Builds a detector regex with the limits the proxy runs it under: at most
/// [`MAX_PATTERN_LEN`] bytes, a bounded program and DFA size, and never a pattern that can
/// match the empty string (it would "mask" between every two characters). The error is one
/// line, fit for a condition message.
///
/// A pattern with a capture group named `mask` masks only that group, so the context it
/// matches on stays readable: `password=(?P<mask>\S+)`.
pub fn detector_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "the pattern is longer than {MAX_PATTERN_LEN} bytes"
        ));
    }
    let regex = regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .nest_limit(REGEX_NEST_LIMIT)
        .build()
        .map_err(|error| match error {
            regex::Error::Syntax(message) => {
                // The syntax error comes with a drawing of the pattern; keep its last line.
                message
                    .lines()
                    .rev()
                    .find(|line| line.starts_with("error:"))
                    .map_or(message.clone(), |line| {
                        line.trim_start_matches("error: ").to_owned()
                    })
            }
            regex::Error::CompiledTooBig(limit) => format!(
                "the pattern compiles to more than {limit} bytes; make it simpler (fewer or \
                 smaller repetitions)"
            ),
            other => other.to_string(),
        })?;
    let hir = regex_syntax::ParserBuilder::new()
        .nest_limit(REGEX_NEST_LIMIT)
        .build()
        .parse(pattern)
        .map_err(|error| error.to_string())?;
    if hir.properties().minimum_len() == Some(0) {
        return Err(
            "the pattern can match the empty string; make every match at least one character"
                .to_owned(),
        );
    }
    Ok(regex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Step {
        Step {
            descendant: false,
            selector: Selector::Name(s.into()),
        }
    }

    fn steps(path: &str) -> Vec<Step> {
        FieldPath::parse(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .steps
    }

    #[test]
    fn dot_paths_with_or_without_the_root() {
        assert_eq!(steps("a.b.c"), [name("a"), name("b"), name("c")]);
        assert_eq!(steps("$.a.b.c"), steps("a.b.c"));
        assert_eq!(steps("$"), []);
        assert_eq!(steps("first-name.e_mail.$type"), {
            [name("first-name"), name("e_mail"), name("$type")]
        });
    }

    #[test]
    fn wildcards_indices_and_quoted_names() {
        let wild = Step {
            descendant: false,
            selector: Selector::Wildcard,
        };
        assert_eq!(
            steps("items[*].card"),
            [name("items"), wild.clone(), name("card")]
        );
        assert_eq!(steps("items.*.card"), steps("items[*].card"));
        assert_eq!(steps("$.items[12]")[1].selector, Selector::Index(12));
        assert_eq!(steps("['first name']"), [name("first name")]);
        assert_eq!(steps(r#"$["a.b"]['it\'s']"#), [name("a.b"), name("it's")]);
        assert_eq!(steps("$[*]"), [wild]);
    }

    #[test]
    fn recursive_descent() {
        let email = Step {
            descendant: true,
            selector: Selector::Name("email".into()),
        };
        assert_eq!(steps("..email"), std::slice::from_ref(&email));
        assert_eq!(steps("$..email"), std::slice::from_ref(&email));
        assert_eq!(steps("customer..email"), [name("customer"), email]);
        assert_eq!(
            steps("..*"),
            [Step {
                descendant: true,
                selector: Selector::Wildcard
            }]
        );
        assert_eq!(steps("..[*]"), steps("..*"));
        assert_eq!(steps("..[2]")[0].selector, Selector::Index(2));
    }

    #[test]
    fn bad_paths_are_refused_with_a_position() {
        for (bad, position) in [
            ("", 0),
            ("a.", 2),
            ("a..", 3),
            ("a...b", 3),
            ("a b", 1),
            ("a.[0]", 2),
            ("a[", 2),
            ("a[x]", 2),
            ("a[01]", 2),
            ("a[1", 3),
            ("a[*", 3),
            ("['a'", 4),
            ("['a", 1),
            ("['']", 1),
            ("a]b", 1),
            ("a.b*", 3),
            ("$a", 1),
            ("a[99999999999999999999999]", 2),
            (r"['a\n']", 3),
        ] {
            let error = FieldPath::parse(bad).unwrap_err();
            assert_eq!(error.position, position, "{bad}: {error}");
        }
        let long = vec!["a"; 33].join(".");
        assert!(FieldPath::parse(&long).is_err());
        assert!(FieldPath::parse(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for (path, canonical) in [
            ("a.b", "$.a.b"),
            ("items.*.card", "$.items[*].card"),
            ("..email", "$..email"),
            ("..*", "$..*"),
            ("['first name'][0]", "$['first name'][0]"),
            (r#"["it's"]"#, r"$['it\'s']"),
            ("$", "$"),
        ] {
            let parsed = FieldPath::parse(path).unwrap();
            assert_eq!(parsed.to_string(), canonical);
            assert_eq!(FieldPath::parse(canonical).unwrap(), parsed);
        }
    }

    #[test]
    fn selectors_match_members_and_elements() {
        assert!(Selector::Name("a".into()).matches_member(b"a"));
        assert!(!Selector::Name("a".into()).matches_element(0));
        assert!(Selector::Index(1).matches_element(1));
        assert!(!Selector::Index(1).matches_member(b"1"));
        assert!(Selector::Wildcard.matches_member(b"x") && Selector::Wildcard.matches_element(9));
    }

    #[test]
    fn detector_regexes_are_checked() {
        assert!(detector_regex(r"\b[A-Z]{2}-\d{6}\b").is_ok());
        assert!(detector_regex(r"password=(?P<mask>\S+)").is_ok());
        let error = detector_regex("(").unwrap_err();
        assert!(!error.contains('\n'), "{error}");
        assert!(error.contains("unclosed group"), "{error}");
        assert!(detector_regex("a*").unwrap_err().contains("empty string"));
        assert!(detector_regex(r"\b").unwrap_err().contains("empty string"));
        assert!(detector_regex(r"\w{1000}\w{1000}\w{1000}").is_err());
        assert!(detector_regex(&"a".repeat(5000)).is_err());
    }
}
