//! The masking plan: the compiled MaskingRules of one topic and one flow, turned into what the
//! masking code runs (paths parsed, regexes built, HMAC keys loaded), once per config.

use std::collections::BTreeMap;
use std::fmt;

use streamward_api::config::{
    BinaryHandling, CompiledMaskingRule, Flow, OnParseError, SecretKeyRef, ValueFormat,
};
use streamward_api::masking::{FieldPath, Selector, Step};

use super::detect::Finder;
use super::strategy::{KeyProblem, Strategy};

/// The default for [`MaskingPlan::max_decompressed_bytes`]: 64 MiB, far above what a Kafka
/// batch holds with the default `message.max.bytes` (1 MiB compressed), far below what a
/// decompression bomb would take.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

/// The masking keys the proxy has: the bytes of each Secret key a strategy names (read by the
/// caller from where the Secret is mounted). Never printed.
#[derive(Clone, Default)]
pub struct MaskingKeys {
    keys: BTreeMap<SecretKeyRef, Vec<u8>>,
}

impl MaskingKeys {
    /// No keys.
    pub fn new() -> MaskingKeys {
        MaskingKeys::default()
    }

    /// Adds (or replaces) the key held in `secret`.
    pub fn insert(&mut self, secret: SecretKeyRef, key: impl Into<Vec<u8>>) {
        self.keys.insert(secret, key.into());
    }

    /// The key held in `secret`, if the proxy has it.
    pub fn get(&self, secret: &SecretKeyRef) -> Option<&[u8]> {
        self.keys.get(secret).map(Vec::as_slice)
    }
}

impl fmt::Debug for MaskingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.keys.keys().map(|k| format!("{}/{}", k.name, k.key)))
            .finish()
    }
}

/// Why a masking plan could not be built. The compiler checks paths and patterns before a
/// config is written, so these mean a config that did not come from `compile` or a key that is
/// not mounted; the caller should fail closed for the topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A field path does not parse.
    #[error(
        "MaskingRule {rule}: spec.fields[{index}].path {path:?} is not a valid field path \
         ({reason}); the config was not written by the compiler, recompile it"
    )]
    Path {
        /// The rule.
        rule: String,
        /// The field's position.
        index: usize,
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A detector cannot be built (a regex that does not compile, a Regex without pattern).
    #[error(
        "MaskingRule {rule}: spec.detectors[{index}] cannot be built ({reason}); the config was \
         not written by the compiler, recompile it"
    )]
    Detector {
        /// The rule.
        rule: String,
        /// The detector's position.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A strategy needs a key the proxy does not have.
    #[error(
        "MaskingRule {rule} needs the masking key {}/{} (Secret/key), which the proxy does not \
         have; mount that Secret key into the proxy",
        secret.name,
        secret.key
    )]
    MissingKey {
        /// The rule.
        rule: String,
        /// The Secret key.
        secret: SecretKeyRef,
    },
    /// A strategy's key is empty.
    #[error(
        "MaskingRule {rule}: the masking key {}/{} is empty; put a random key (32 bytes or more) \
         in the Secret",
        secret.name,
        secret.key
    )]
    EmptyKey {
        /// The rule.
        rule: String,
        /// The Secret key.
        secret: SecretKeyRef,
    },
}

/// A field path and how to mask what it selects.
#[derive(Debug, Clone)]
pub(crate) struct FieldMask {
    pub(crate) steps: Vec<Step>,
    /// Bit `k` set when step `k` is a descendant (`..`) step, which stays active deeper down.
    pub(crate) descendants: u64,
    /// The bit of "every step matched".
    pub(crate) done: u64,
    pub(crate) strategy: Strategy,
}

impl FieldMask {
    fn new(steps: Vec<Step>, strategy: Strategy) -> FieldMask {
        let descendants = steps
            .iter()
            .enumerate()
            .filter(|(_, step)| step.descendant)
            .fold(0, |bits, (k, _)| bits | 1 << k);
        FieldMask {
            done: 1 << steps.len(),
            descendants,
            steps,
            strategy,
        }
    }
}

/// A detector and how to mask what it finds.
#[derive(Debug, Clone)]
pub(crate) struct DetectorMask {
    pub(crate) finder: Finder,
    pub(crate) strategy: Strategy,
}

/// Detectors in the order they run, and the shortest text any of them can match (most
/// strings are shorter: they skip every detector at once).
#[derive(Debug, Clone)]
pub(crate) struct Detectors {
    list: Vec<DetectorMask>,
    min_len: usize,
}

impl Default for Detectors {
    fn default() -> Detectors {
        Detectors {
            list: Vec::new(),
            min_len: usize::MAX,
        }
    }
}

impl Detectors {
    fn extend(&mut self, more: impl IntoIterator<Item = DetectorMask>) {
        self.list.extend(more);
        self.min_len = self
            .list
            .iter()
            .map(|d| d.finder.min_len())
            .min()
            .unwrap_or(usize::MAX);
    }

    /// No detector can match a text shorter than this.
    pub(crate) fn min_len(&self) -> usize {
        self.min_len
    }
}

impl std::ops::Deref for Detectors {
    type Target = [DetectorMask];

    fn deref(&self) -> &[DetectorMask] {
        &self.list
    }
}

/// What replaces a value that cannot be parsed: the placeholder (fail closed), or nothing.
pub(crate) type OnUnparsable = Option<Box<str>>;

/// Masking of JSON values.
#[derive(Debug, Clone, Default)]
pub(crate) struct JsonStage {
    pub(crate) fields: Vec<FieldMask>,
    pub(crate) detectors: Detectors,
    pub(crate) on_unparsable: OnUnparsable,
    /// What the field paths' steps can match, to skip most keys at once.
    pub(crate) selectors: SelectorSummary,
}

/// A summary of the selectors of all field paths: a key that fails [`Self::may_name`] matches
/// no name selector, and without wildcards (or indices, for elements) such a child only
/// carries the descendant steps of its parent.
#[derive(Debug, Clone, Default)]
pub(crate) struct SelectorSummary {
    /// The names' [`name_hash`]es, as a 256-bit set.
    names: [u64; 4],
    pub(crate) wildcards: bool,
    pub(crate) indices: bool,
}

/// A hash of a key's length, first and last bytes: together they tell apart most keys that
/// share a length and a first byte (`city` and `card`, `currency` and `customer`), which the
/// length and first byte alone let through.
#[inline]
fn name_hash(name: &[u8]) -> Option<u8> {
    let (&first, &last) = (name.first()?, name.last()?);
    // Fibonacci hashing of the three packed into one word: its top byte.
    let packed = u32::from(first) << 16 | u32::from(last) << 8 | (name.len() & 0xff) as u32;
    Some((packed.wrapping_mul(0x9E37_79B1) >> 24) as u8)
}

impl SelectorSummary {
    fn add(&mut self, steps: &[Step]) {
        for step in steps {
            match &step.selector {
                Selector::Name(name) => {
                    // Names are never empty (the path parser refuses them).
                    if let Some(hash) = name_hash(name.as_bytes()) {
                        self.names[usize::from(hash >> 6)] |= 1 << (hash & 63);
                    }
                }
                Selector::Index(_) => self.indices = true,
                Selector::Wildcard => self.wildcards = true,
            }
        }
    }

    /// Whether some name selector could match the key `name`.
    #[inline]
    pub(crate) fn may_name(&self, name: &[u8]) -> bool {
        name_hash(name)
            .is_some_and(|hash| self.names[usize::from(hash >> 6)] & (1 << (hash & 63)) != 0)
    }
}

/// Masking of UTF-8 text values.
#[derive(Debug, Clone, Default)]
pub(crate) struct TextStage {
    pub(crate) detectors: Detectors,
    pub(crate) on_unparsable: OnUnparsable,
}

/// A record header to mask.
#[derive(Debug, Clone)]
pub(crate) struct HeaderMask {
    pub(crate) name: Box<[u8]>,
    pub(crate) strategy: Strategy,
}

/// How the records of one topic flowing one way are masked: built once per config from the
/// rules [`streamward_api::config::ProxyConfig::masking_rules_for`] picks, used for every
/// record. Rules of the same format are merged (their fields and detectors run in rule order,
/// the first field path that selects a leaf decides its strategy); rules of different formats
/// run one after the other (JSON, then text, then binary).
#[derive(Debug, Clone)]
pub struct MaskingPlan {
    flow: Flow,
    rules: Vec<String>,
    pub(crate) json: Option<JsonStage>,
    pub(crate) text: Option<TextStage>,
    /// The placeholder every value is replaced by (a Binary rule with `binary: Redact`).
    pub(crate) binary: Option<Box<str>>,
    pub(crate) headers: Vec<HeaderMask>,
    max_decompressed_bytes: usize,
}

impl MaskingPlan {
    /// Builds the plan for records flowing `flow` from `rules` (rules whose direction does not
    /// cover `flow` are skipped), with the HMAC and format-preserving keys from `keys`.
    pub fn new<'r>(
        rules: impl IntoIterator<Item = &'r CompiledMaskingRule>,
        flow: Flow,
        keys: &MaskingKeys,
    ) -> Result<MaskingPlan, PlanError> {
        let mut plan = MaskingPlan {
            flow,
            rules: Vec::new(),
            json: None,
            text: None,
            binary: None,
            headers: Vec::new(),
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
        };
        for rule in rules {
            if !rule.direction.covers(flow) {
                continue;
            }
            plan.add(rule, keys)?;
        }
        Ok(plan)
    }

    /// Builds a plan that runs every one of `rules`, whatever its direction: what an audit
    /// record of the values must apply so that it never holds what any rule masks for some
    /// reader (see [`crate::masking::AuditMasking`]).
    pub fn every_direction<'r>(
        rules: impl IntoIterator<Item = &'r CompiledMaskingRule>,
        keys: &MaskingKeys,
    ) -> Result<MaskingPlan, PlanError> {
        let mut plan = MaskingPlan::new([], Flow::Consume, keys)?;
        for rule in rules {
            plan.add(rule, keys)?;
        }
        Ok(plan)
    }

    fn add(&mut self, rule: &CompiledMaskingRule, keys: &MaskingKeys) -> Result<(), PlanError> {
        let strategy = |compiled| {
            Strategy::new(compiled, |secret| keys.get(secret)).map_err(|problem| {
                // A strategy only fails for want of its key.
                let secret = compiled.key_secret_ref().cloned().unwrap_or(SecretKeyRef {
                    name: String::new(),
                    key: String::new(),
                });
                match problem {
                    KeyProblem::Missing => PlanError::MissingKey {
                        rule: rule.name.clone(),
                        secret,
                    },
                    KeyProblem::Empty => PlanError::EmptyKey {
                        rule: rule.name.clone(),
                        secret,
                    },
                }
            })
        };
        let on_unparsable: OnUnparsable = match rule.on_parse_error {
            OnParseError::Redact => Some(rule.placeholder.as_str().into()),
            OnParseError::Pass => None,
        };
        let mut detectors = Vec::with_capacity(rule.detectors.len());
        for (index, detector) in rule.detectors.iter().enumerate() {
            let finder =
                Finder::new(detector.detector, detector.pattern.as_deref()).map_err(|reason| {
                    PlanError::Detector {
                        rule: rule.name.clone(),
                        index,
                        reason,
                    }
                })?;
            detectors.push(DetectorMask {
                finder,
                strategy: strategy(&detector.strategy)?,
            });
        }
        // A rule that only masks headers leaves values alone, JSON or not.
        let reads_values = !rule.fields.is_empty() || !detectors.is_empty();
        match rule.format {
            ValueFormat::Json | ValueFormat::Text if !reads_values => {}
            ValueFormat::Json => {
                let stage = self.json.get_or_insert_with(JsonStage::default);
                for (index, field) in rule.fields.iter().enumerate() {
                    let path = FieldPath::parse(&field.path).map_err(|error| PlanError::Path {
                        rule: rule.name.clone(),
                        index,
                        path: field.path.clone(),
                        reason: error.to_string(),
                    })?;
                    stage.selectors.add(path.steps());
                    stage.fields.push(FieldMask::new(
                        path.steps().to_vec(),
                        strategy(&field.strategy)?,
                    ));
                }
                stage.detectors.extend(detectors);
                // Fail closed wins: any rule that redacts unparsable values makes it so.
                if stage.on_unparsable.is_none() {
                    stage.on_unparsable = on_unparsable;
                }
            }
            ValueFormat::Text => {
                let stage = self.text.get_or_insert_with(TextStage::default);
                stage.detectors.extend(detectors);
                if stage.on_unparsable.is_none() {
                    stage.on_unparsable = on_unparsable;
                }
            }
            ValueFormat::Binary => {
                if rule.binary == BinaryHandling::Redact && self.binary.is_none() {
                    self.binary = Some(rule.placeholder.as_str().into());
                }
            }
        }
        for header in &rule.headers {
            if self
                .headers
                .iter()
                .all(|known| *known.name != *header.name.as_bytes())
            {
                self.headers.push(HeaderMask {
                    name: header.name.as_bytes().into(),
                    strategy: strategy(&header.strategy)?,
                });
            }
        }
        self.rules.push(rule.name.clone());
        Ok(())
    }

    /// Sets the most bytes a compressed batch may decompress to (default
    /// [`DEFAULT_MAX_DECOMPRESSED_BYTES`]); a batch over it is refused, not masked.
    pub fn with_max_decompressed_bytes(mut self, limit: usize) -> MaskingPlan {
        self.max_decompressed_bytes = limit;
        self
    }

    /// The most bytes a compressed batch may decompress to.
    pub fn max_decompressed_bytes(&self) -> usize {
        self.max_decompressed_bytes
    }

    /// The flow the plan is for.
    pub fn flow(&self) -> Flow {
        self.flow
    }

    /// The names of the rules in the plan, for audit events.
    pub fn rules(&self) -> &[String] {
        &self.rules
    }

    /// Whether the plan masks nothing (no rule applied): records can be forwarded untouched
    /// without decoding them.
    pub fn is_empty(&self) -> bool {
        !self.masks_values() && self.headers.is_empty()
    }

    /// Whether the plan may change record values (not only headers).
    pub fn masks_values(&self) -> bool {
        self.json.is_some() || self.text.is_some() || self.binary.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamward_api::acl::{PatternType, ResourcePattern, ResourceType};
    use streamward_api::config::{
        CompiledDetector, CompiledField, CompiledHeader, DetectorType, MaskDirection, MaskStrategy,
        Subjects, TokenEncoding,
    };

    pub(crate) fn rule(name: &str) -> CompiledMaskingRule {
        CompiledMaskingRule {
            name: name.into(),
            topics: vec![
                ResourcePattern::new(ResourceType::Topic, "*", PatternType::Literal).unwrap(),
            ],
            direction: MaskDirection::Consume,
            format: ValueFormat::Json,
            fields: vec![],
            detectors: vec![],
            headers: vec![],
            binary: BinaryHandling::Pass,
            on_parse_error: OnParseError::Redact,
            placeholder: "****".into(),
            exempt: Subjects::default(),
        }
    }

    #[test]
    fn the_selector_summary_never_rules_out_a_selected_name() {
        let names = [
            "customer", "email", "phone", "payment", "card", "number", "iban", "é", "x",
        ];
        let mut summary = SelectorSummary::default();
        for name in names {
            let path = FieldPath::parse(&format!("['{name}']")).unwrap();
            summary.add(path.steps());
        }
        for name in names {
            assert!(summary.may_name(name.as_bytes()), "{name}");
        }
        assert!(!summary.may_name(b""));
        // Keys the length and first byte alone let through.
        for key in [
            "city", "currency", "carrier", "country", "name", "notes", "expiry",
        ] {
            assert!(!summary.may_name(key.as_bytes()), "{key}");
        }
    }

    fn secret() -> SecretKeyRef {
        SecretKeyRef {
            name: "mask".into(),
            key: "hmac".into(),
        }
    }

    #[test]
    fn rules_of_other_flows_are_skipped() {
        let mut produce = rule("p");
        produce.direction = MaskDirection::Produce;
        produce.headers = vec![CompiledHeader {
            name: "h".into(),
            strategy: MaskStrategy::Nullify,
        }];
        let plan = MaskingPlan::new([&produce], Flow::Consume, &MaskingKeys::new()).unwrap();
        assert!(plan.is_empty());
        assert!(plan.rules().is_empty());
        let plan = MaskingPlan::new([&produce], Flow::Produce, &MaskingKeys::new()).unwrap();
        assert!(!plan.is_empty() && !plan.masks_values());
        assert_eq!(plan.rules(), ["p"]);
        assert_eq!(plan.flow(), Flow::Produce);
    }

    #[test]
    fn keys_must_be_there_and_are_never_printed() {
        let mut hmac = rule("tokens");
        hmac.fields = vec![CompiledField {
            path: "$.email".into(),
            strategy: MaskStrategy::Hmac {
                key_secret_ref: secret(),
                encoding: TokenEncoding::Hex,
            },
        }];
        let error = MaskingPlan::new([&hmac], Flow::Consume, &MaskingKeys::new()).unwrap_err();
        assert_eq!(
            error,
            PlanError::MissingKey {
                rule: "tokens".into(),
                secret: secret()
            }
        );
        assert!(error.to_string().contains("mask/hmac"), "{error}");
        let mut keys = MaskingKeys::new();
        keys.insert(secret(), Vec::new());
        assert!(matches!(
            MaskingPlan::new([&hmac], Flow::Consume, &keys),
            Err(PlanError::EmptyKey { .. })
        ));
        keys.insert(secret(), b"super-secret-key".to_vec());
        let plan = MaskingPlan::new([&hmac], Flow::Consume, &keys).unwrap();
        let printed = format!("{plan:?} {keys:?}");
        assert!(!printed.contains("super-secret"), "{printed}");
    }

    #[test]
    fn bad_paths_and_patterns_are_typed_errors() {
        let mut bad_path = rule("r");
        bad_path.fields = vec![CompiledField {
            path: "a[".into(),
            strategy: MaskStrategy::Nullify,
        }];
        assert!(matches!(
            MaskingPlan::new([&bad_path], Flow::Consume, &MaskingKeys::new()),
            Err(PlanError::Path { index: 0, .. })
        ));
        let mut bad_regex = rule("r");
        bad_regex.detectors = vec![
            CompiledDetector {
                detector: DetectorType::Email,
                pattern: None,
                strategy: MaskStrategy::Nullify,
            },
            CompiledDetector {
                detector: DetectorType::Regex,
                pattern: Some("(".into()),
                strategy: MaskStrategy::Nullify,
            },
        ];
        let error = MaskingPlan::new([&bad_regex], Flow::Consume, &MaskingKeys::new()).unwrap_err();
        assert!(
            matches!(error, PlanError::Detector { index: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn rules_merge_by_format_and_fail_closed_wins() {
        let mut pass = rule("a");
        pass.on_parse_error = OnParseError::Pass;
        pass.fields = vec![CompiledField {
            path: "x".into(),
            strategy: MaskStrategy::Nullify,
        }];
        let mut redact = rule("b");
        redact.placeholder = "[gone]".into();
        redact.detectors = vec![CompiledDetector {
            detector: DetectorType::Email,
            pattern: None,
            strategy: MaskStrategy::Nullify,
        }];
        let mut binary = rule("c");
        binary.format = ValueFormat::Binary;
        binary.binary = BinaryHandling::Redact;
        binary.placeholder = "[binary]".into();
        let plan = MaskingPlan::new(
            [&pass, &redact, &binary],
            Flow::Consume,
            &MaskingKeys::new(),
        )
        .unwrap();
        let json = plan.json.as_ref().unwrap();
        assert_eq!(json.fields.len(), 1);
        assert_eq!(json.detectors.len(), 1);
        assert_eq!(json.on_unparsable.as_deref(), Some("[gone]"));
        assert_eq!(plan.binary.as_deref(), Some("[binary]"));
        assert!(plan.text.is_none());
        assert_eq!(plan.rules(), ["a", "b", "c"]);
        assert_eq!(
            plan.clone()
                .with_max_decompressed_bytes(1024)
                .max_decompressed_bytes(),
            1024
        );
    }
}
