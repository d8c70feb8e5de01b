//! Masking one record value (and record headers) with a plan.

use std::borrow::Cow;
use std::cell::RefCell;

use super::json::{JsonScratch, mask_json, mask_text_with, write_json_string};
use super::plan::{MaskingPlan, OnUnparsable};
use super::strategy::Strategy;

/// A masked value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked<'a> {
    /// The value to forward: borrowed when nothing changed.
    pub bytes: Cow<'a, [u8]>,
    /// How many leaves and detector matches were masked (a value replaced whole counts 1).
    pub fields_masked: u32,
    /// Whether the value was not in the rule's format (not JSON, not UTF-8); it was then
    /// replaced by the placeholder unless the rule says `onParseError: Pass`.
    pub parse_failed: bool,
}

impl Masked<'_> {
    /// Whether the value changed.
    pub fn changed(&self) -> bool {
        matches!(self.bytes, Cow::Owned(_))
    }
}

/// Buffers reused from value to value (per thread for [`mask_value`], per call for a batch).
#[derive(Default)]
pub(crate) struct Scratch {
    json: JsonScratch,
    /// A stage's output while the next stage reads the previous one.
    spare: Vec<u8>,
    texts: [String; 2],
    normal: String,
    pub(crate) header: String,
}

impl Scratch {
    /// Bytes the scratch buffers hold (for the masking memory budget).
    pub(crate) fn bytes(&self) -> usize {
        self.spare.capacity()
            + self.texts.iter().map(String::capacity).sum::<usize>()
            + self.normal.capacity()
            + self.header.capacity()
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Masks one record value (a Kafka record's value, not null) with `plan`: JSON field paths and
/// detectors, text detectors, binary redaction, in that order. Never fails: a value that is not
/// in the rule's format is replaced by the placeholder (`onParseError: Redact`, the default)
/// or passed (`Pass`), and `parse_failed` says so.
pub fn mask_value<'a>(plan: &MaskingPlan, value: &'a [u8]) -> Masked<'a> {
    let mut out = Vec::new();
    let outcome = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => mask_value_into(plan, value, &mut out, &mut scratch),
        // Only if masking ever called itself; a fresh scratch is as correct.
        Err(_) => mask_value_into(plan, value, &mut out, &mut Scratch::default()),
    });
    Masked {
        bytes: if outcome.changed {
            Cow::Owned(out)
        } else {
            Cow::Borrowed(value)
        },
        fields_masked: outcome.fields,
        parse_failed: outcome.parse_failed,
    }
}

/// What masking a value did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// `out` holds the new value.
    pub(crate) changed: bool,
    pub(crate) fields: u32,
    pub(crate) parse_failed: bool,
}

/// Masks `value` into `out` (when `changed`), reusing `scratch`.
pub(crate) fn mask_value_into(
    plan: &MaskingPlan,
    value: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Outcome {
    let mut outcome = Outcome::default();
    // `out` holds the current value once a stage changed it; a later stage reads it from
    // `spare` and writes `out` again.
    let mut staged = false;
    let mut run = |stage: &mut Stage<'_>| {
        let input = if staged {
            std::mem::swap(out, &mut scratch.spare);
            std::mem::take(&mut scratch.spare)
        } else {
            Vec::new()
        };
        let current: &[u8] = if staged { &input } else { value };
        let result = stage(current, out, scratch);
        outcome.fields += result.fields;
        outcome.parse_failed |= result.parse_failed;
        if result.changed {
            staged = true;
            scratch.spare = input;
        } else if staged {
            // Unchanged: the current value goes back to `out`.
            *out = input;
        }
    };
    if let Some(stage) = &plan.json {
        run(
            &mut |input, out, scratch| match mask_json(stage, input, out, &mut scratch.json) {
                Ok(0) => StageResult::default(),
                Ok(fields) => StageResult::changed(fields),
                Err(_) => unparsable(&stage.on_unparsable, input, out, true),
            },
        );
    }
    if let Some(stage) = &plan.text {
        run(&mut |input, out, scratch| {
            let Ok(text) = std::str::from_utf8(input) else {
                return unparsable(&stage.on_unparsable, input, out, false);
            };
            let found = mask_text_with(
                &stage.detectors,
                text,
                &mut scratch.texts,
                &mut scratch.normal,
                false,
            );
            match found {
                Some((count, index)) if count > 0 => {
                    out.clear();
                    out.extend_from_slice(scratch.texts[index].as_bytes());
                    StageResult::changed(count)
                }
                _ => StageResult::default(),
            }
        });
    }
    if let Some(placeholder) = &plan.binary {
        run(&mut |input, out, _| {
            if input == placeholder.as_bytes() {
                return StageResult::default();
            }
            out.clear();
            out.extend_from_slice(placeholder.as_bytes());
            StageResult::changed(1)
        });
    }
    outcome.changed = staged;
    outcome
}

/// One stage of masking: reads the current value, may write a new one.
type Stage<'s> = dyn FnMut(&[u8], &mut Vec<u8>, &mut Scratch) -> StageResult + 's;

#[derive(Debug, Default, Clone, Copy)]
struct StageResult {
    changed: bool,
    fields: u32,
    parse_failed: bool,
}

impl StageResult {
    fn changed(fields: u32) -> StageResult {
        StageResult {
            changed: true,
            fields,
            parse_failed: false,
        }
    }
}

/// A value the stage cannot read: replaced by the placeholder (as a JSON string for JSON, so
/// the topic still carries JSON) or passed.
fn unparsable(
    on_unparsable: &OnUnparsable,
    input: &[u8],
    out: &mut Vec<u8>,
    json: bool,
) -> StageResult {
    let Some(placeholder) = on_unparsable else {
        return StageResult {
            parse_failed: true,
            ..StageResult::default()
        };
    };
    out.clear();
    if json {
        write_json_string(placeholder, out);
    } else {
        out.extend_from_slice(placeholder.as_bytes());
    }
    StageResult {
        changed: out.as_slice() != input,
        fields: 1,
        parse_failed: true,
    }
}

/// What masking a header did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderMasked<'s> {
    /// The header is not masked, or already was.
    Unchanged,
    /// The new value (null, or the text).
    Value(Option<&'s [u8]>),
}

/// Masks the value of header `key` if the plan names it. The new value lives in `buffer`.
pub(crate) fn mask_header<'s>(
    plan: &MaskingPlan,
    key: &[u8],
    value: Option<&[u8]>,
    buffer: &'s mut String,
) -> HeaderMasked<'s> {
    let Some(header) = plan.headers.iter().find(|h| *h.name == *key) else {
        return HeaderMasked::Unchanged;
    };
    let Some(value) = value else {
        // Null has nothing to hide.
        return HeaderMasked::Unchanged;
    };
    if matches!(header.strategy, Strategy::Nullify) {
        return HeaderMasked::Value(None);
    }
    buffer.clear();
    match std::str::from_utf8(value) {
        Ok(text) => header.strategy.mask_text(text, value, buffer),
        Err(_) => header.strategy.mask_bytes(value, buffer),
    }
    if buffer.as_bytes() == value {
        HeaderMasked::Unchanged
    } else {
        HeaderMasked::Value(Some(buffer.as_bytes()))
    }
}
