//! The embedded store: append-only segment files of hash-chained records (see [`crate::chain`]),
//! signed checkpoints (see [`crate::checkpoint`]) and, per workload identity, the ids already
//! stored with the digest of their content.
//!
//! Layout of the data folder:
//!
//! ```text
//! segments/<first index, 20 digits>.seg   records, one per line, appended and fsynced
//! checkpoints.ndjson                      signed checkpoints, one per line
//! checkpoint.pub                          the public key that verifies them
//! signing.key                             the private key (unless --signing-key puts it elsewhere)
//! ```
//!
//! One writer owns a [`Store`]; it appends a group of batches with one `write` and one
//! `fdatasync`, and only then are the batches acknowledged.
//!
//! The signing key is made only for an empty data folder. A folder that holds segments,
//! checkpoints or a public key is never given a new key: a missing key, or one that did not
//! sign the newest checkpoint, stops the collector with an error that says what to restore.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use jiff::Timestamp;
use streamward_api::audit::{AuditEvent, QUERY_EVENT};

use crate::chain::{self, GENESIS};
use crate::checkpoint::{Checkpoint, PublicKey, SigningKey};

/// The segments folder inside the data folder.
pub const SEGMENTS: &str = "segments";
/// The checkpoints file inside the data folder.
pub const CHECKPOINTS: &str = "checkpoints.ndjson";
/// The public key file inside the data folder.
pub const PUBLIC_KEY: &str = "checkpoint.pub";
/// The default signing key file inside the data folder.
pub const SIGNING_KEY: &str = "signing.key";

/// An event ready to be appended: its identity, its id and its JSON.
pub struct Prepared {
    /// The workload the event is about, `<namespace>/<serviceaccount>` (see [`identity_key`]).
    /// Ingest only lets a workload's token send that workload's events, so this is the
    /// authenticated identity; ids are unique per identity, never across them.
    pub identity: String,
    /// The event id.
    pub id: String,
    /// The event, serialised.
    pub json: String,
    /// The SHA-256 of `json`, which tells a retry from a rewrite.
    digest: Digest,
}

impl Prepared {
    /// An event to append. The digest is computed here, on the caller's thread, so the one
    /// writer thread does not hash every event.
    pub fn new(identity: String, id: String, json: String) -> Prepared {
        let digest = digest(json.as_bytes());
        Prepared {
            identity,
            id,
            json,
            digest,
        }
    }
}

/// The key ids are de-duplicated under: the workload's namespace and service account.
pub fn identity_key(namespace: &str, service_account: &str) -> String {
    format!("{namespace}/{service_account}")
}

/// The key ids of `event` are de-duplicated under (see [`identity_key`]).
pub fn event_identity(event: &AuditEvent) -> String {
    match event.identity() {
        Some(identity) => identity_key(&identity.namespace, &identity.service_account),
        None => QUERIES_IDENTITY.to_string(),
    }
}

/// The key the collector's own query events are de-duplicated under: without a `/`, so no
/// workload's key (see [`identity_key`]) can be it.
pub const QUERIES_IDENTITY: &str = "streamward-collector";

/// The identity key of a stored event (JSON), as [`identity_key`].
fn stored_identity(event: &serde_json::Value) -> String {
    if event["type"].as_str() == Some(QUERY_EVENT) {
        return QUERIES_IDENTITY.to_string();
    }
    let identity = &event["data"]["identity"];
    identity_key(
        identity["namespace"].as_str().unwrap_or_default(),
        identity["serviceAccount"].as_str().unwrap_or_default(),
    )
}

type Digest = [u8; 32];

fn digest(json: &[u8]) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(json).into()
}

/// An event refused because its identity already stored its id with other content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// Its position in the batch.
    pub position: usize,
    /// SHA-256 (hex) of the event that is stored under the id.
    pub stored_sha256: String,
    /// SHA-256 (hex) of the event refused.
    pub refused_sha256: String,
}

/// What one batch came to.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Appended {
    /// Events stored now.
    pub accepted: usize,
    /// Events that were stored before with the same content (or twice in this batch) and were
    /// not stored again.
    pub duplicates: usize,
    /// The positions in the batch of the events stored now.
    #[serde(skip)]
    pub stored: Vec<usize>,
    /// Events whose id was stored before with other content: refused.
    #[serde(skip)]
    pub conflicts: Vec<Conflict>,
}

/// How long and how much the store keeps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    /// Sealed segments whose last record is older than this are removed.
    pub max_age: Option<std::time::Duration>,
    /// The oldest sealed segments are removed while all segments together exceed this.
    pub max_bytes: Option<u64>,
}

struct OpenSegment {
    name: String,
    file: File,
    len: u64,
    first_index: u64,
    first_prev: String,
}

struct SealedSegment {
    name: String,
    bytes: u64,
    sealed_at: Timestamp,
    first_index: u64,
    last_index: u64,
    last_hash: String,
}

/// The store, owned by one writer.
pub struct Store {
    dir: PathBuf,
    key: SigningKey,
    segment_max_bytes: u64,
    open: Option<OpenSegment>,
    sealed: VecDeque<SealedSegment>,
    next_index: u64,
    last_hash: String,
    /// identity → event id → digest of the stored event.
    seen: HashMap<String, HashMap<String, Digest>>,
    checkpoints: File,
    /// The number the next checkpoint gets, and the hash of the last checkpoint line.
    checkpoint_seq: u64,
    checkpoint_prev: String,
    /// The last index a checkpoint covers.
    checkpointed: Option<u64>,
    broken: Option<String>,
}

/// The file name of the segment whose first record has `index`.
pub fn segment_name(index: u64) -> String {
    format!("{index:020}.seg")
}

/// The segment files of a data folder, oldest first.
pub fn segment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let folder = dir.join(SEGMENTS);
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e).with_context(|| format!("listing {}", folder.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "seg") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// One line of the checkpoints file.
pub struct CheckpointLine {
    /// Its line number, from 1.
    pub number: usize,
    /// The SHA-256 (hex) of the line's bytes (without the newline): the next checkpoint's
    /// `prev`.
    pub hash: String,
    /// The checkpoint, or why the line is not one.
    pub checkpoint: Result<Checkpoint, String>,
}

/// The checkpoints of a data folder, in the order they were written. A line that does not
/// parse is returned as an error, for `verify` to report.
pub fn read_checkpoints(dir: &Path) -> Result<Vec<CheckpointLine>> {
    read_checkpoints_upto(dir, None)
}

/// The checkpoints in the first `length` bytes of the checkpoints file (all with `None`).
pub fn read_checkpoints_upto(dir: &Path, length: Option<u64>) -> Result<Vec<CheckpointLine>> {
    let path = dir.join(CHECKPOINTS);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let file = file.take(length.unwrap_or(u64::MAX));
    let mut out = Vec::new();
    for (number, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.is_empty() {
            continue;
        }
        out.push(CheckpointLine {
            number: number + 1,
            hash: chain::sha256_hex(&line),
            checkpoint: serde_json::from_slice(&line).map_err(|e| e.to_string()),
        });
    }
    Ok(out)
}

/// What a data folder already holds that a signing key must have signed.
struct History {
    /// Segment files holding records.
    segments: Vec<String>,
    /// Checkpoint lines.
    checkpoints: Vec<CheckpointLine>,
    /// The public key file, if there is one.
    public: Option<PublicKey>,
}

impl History {
    fn read(dir: &Path) -> Result<History> {
        let mut segments = Vec::new();
        for path in segment_files(dir)? {
            if std::fs::metadata(&path)
                .map(|m| m.len() > 0)
                .unwrap_or(true)
            {
                segments.push(file_name(&path));
            }
        }
        let public_path = dir.join(PUBLIC_KEY);
        let public = match PublicKey::read(&public_path) {
            Ok(key) => Some(key),
            Err(_) if !public_path.exists() => None,
            Err(error) => return Err(error),
        };
        Ok(History {
            segments,
            checkpoints: read_checkpoints(dir)?,
            public,
        })
    }

    fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.checkpoints.is_empty() && self.public.is_none()
    }

    /// What the folder holds, in words, for errors.
    fn describe(&self, dir: &Path) -> String {
        let mut parts = Vec::new();
        if !self.segments.is_empty() {
            let mut names = self.segments.iter().take(3).cloned().collect::<Vec<_>>();
            if self.segments.len() > 3 {
                names.push("…".into());
            }
            parts.push(format!(
                "{} segment(s) with records ({}/{}/{})",
                self.segments.len(),
                dir.display(),
                SEGMENTS,
                names.join(", ")
            ));
        }
        if !self.checkpoints.is_empty() {
            parts.push(format!(
                "{} checkpoint(s) in {}",
                self.checkpoints.len(),
                dir.join(CHECKPOINTS).display()
            ));
        }
        if let Some(public) = &self.public {
            parts.push(format!(
                "the public key {} (fingerprint {})",
                dir.join(PUBLIC_KEY).display(),
                public.fingerprint()
            ));
        }
        parts.join(", ")
    }
}

/// Reads the signing key, or makes one when the data folder is empty; never replaces the key
/// of a folder that has history.
fn signing_key_for(dir: &Path, path: &Path, history: &History) -> Result<SigningKey> {
    let exists = match std::fs::metadata(path) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(e)
                .with_context(|| format!("looking for the signing key {}", path.display()));
        }
    };
    if exists {
        return SigningKey::load(path);
    }
    if !history.is_empty() {
        bail!(
            "the checkpoint signing key {} is missing, but the data folder already holds {}. A \
             new key would leave every checkpoint of this store unverifiable, so none is made: \
             restore the key that signed it (the file, or the Secret mounted there) and start \
             again. If that key is lost for good, move {} aside (keep it: `streamward-collector \
             verify --data <it> --fingerprint <the fingerprint recorded at its first start>` \
             still checks it) and start with an empty data folder",
            path.display(),
            history.describe(dir),
            dir.display()
        );
    }
    let key = SigningKey::create(path)?;
    tracing::warn!(
        path = %path.display(),
        fingerprint = %key.public_key().fingerprint(),
        "made a new checkpoint signing key for an empty data folder: record this fingerprint \
         somewhere the collector cannot write, and verify with `--fingerprint` against it"
    );
    Ok(key)
}

/// Checks that `key` is the key of the folder's public key file and of its newest checkpoint.
fn check_key(dir: &Path, path: &Path, key: &SigningKey, history: &History) -> Result<()> {
    let public = key.public_key();
    if let Some(existing) = &history.public
        && *existing != public
    {
        bail!(
            "{} holds the public key {} but the signing key {} is {}: the checkpoints of this \
             store were signed with another key. Start with the key that signed them, or with \
             an empty data folder",
            dir.join(PUBLIC_KEY).display(),
            existing.fingerprint(),
            path.display(),
            public.fingerprint()
        );
    }
    let newest = history
        .checkpoints
        .iter()
        .rev()
        .find_map(|line| line.checkpoint.as_ref().ok().map(|c| (line.number, c)));
    match newest {
        Some((number, checkpoint)) if !checkpoint.is_signed_by(&public) => bail!(
            "the newest checkpoint of {} (line {number}: {} up to record {}) is not signed by the \
             signing key {} (fingerprint {}): this store was signed with another key, or the \
             checkpoints were changed. Start with the key that signed them, and run \
             `streamward-collector verify --data {} --fingerprint <the recorded fingerprint>`",
            dir.join(CHECKPOINTS).display(),
            checkpoint.segment,
            checkpoint.last_index,
            path.display(),
            public.fingerprint(),
            dir.display()
        ),
        None if !history.segments.is_empty() => tracing::warn!(
            data = %dir.display(),
            "the segments hold records but no checkpoint signs them yet (the collector stopped \
             before its first checkpoint, or the checkpoints were removed)"
        ),
        _ => {}
    }
    Ok(())
}

/// Cuts a partial last line off the checkpoints file: a checkpoint whose write never finished.
fn cut_partial_checkpoint(dir: &Path) -> Result<()> {
    let path = dir.join(CHECKPOINTS);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    tracing::warn!(
        file = %path.display(),
        bytes = bytes.len() - complete,
        "cutting off a partial checkpoint whose write never finished"
    );
    let file = OpenOptions::new().write(true).open(&path)?;
    file.set_len(complete as u64)?;
    file.sync_all()
        .with_context(|| format!("cutting {}", path.display()))
}

impl Store {
    /// Opens (or creates) the store in `dir`, signing checkpoints with the key at
    /// `signing_key`. The key is made there only when `dir` holds nothing yet; a store with
    /// history whose key is missing, or whose newest checkpoint that key did not sign, is
    /// refused.
    ///
    /// A last line without its newline is an append that was never acknowledged (the
    /// collector stopped mid-write): it is cut off.
    pub fn open(dir: &Path, signing_key: &Path, segment_max_bytes: u64) -> Result<Store> {
        std::fs::create_dir_all(dir.join(SEGMENTS))
            .with_context(|| format!("creating the data folder {}", dir.display()))?;
        cut_partial_checkpoint(dir)?;
        let history = History::read(dir)?;
        let key = signing_key_for(dir, signing_key, &history)?;
        check_key(dir, signing_key, &key, &history)?;
        let public = key.public_key();
        let public_path = dir.join(PUBLIC_KEY);
        if history.public.is_none() {
            std::fs::write(&public_path, format!("{}\n", public.to_hex()))
                .with_context(|| format!("writing {}", public_path.display()))?;
        }
        tracing::info!(
            fingerprint = %public.fingerprint(),
            public_key = %public.to_hex(),
            "checkpoints are signed with this key (GET /v1/key, `streamward-collector key`)"
        );

        let checkpoints_path = dir.join(CHECKPOINTS);
        let (checkpoint_seq, checkpoint_prev) = match history.checkpoints.last() {
            None => (0, GENESIS.to_string()),
            Some(last) => {
                let seq = match &last.checkpoint {
                    Ok(Checkpoint { seq: Some(seq), .. }) => seq + 1,
                    _ => history.checkpoints.len() as u64,
                };
                (seq, last.hash.clone())
            }
        };
        let sealed_times: Vec<(String, Timestamp)> = history
            .checkpoints
            .into_iter()
            .filter_map(|line| line.checkpoint.ok())
            .filter(|c| c.sealed)
            .map(|c| (c.segment, c.time))
            .collect();
        let checkpoints = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&checkpoints_path)
            .with_context(|| format!("opening {}", checkpoints_path.display()))?;

        let mut store = Store {
            dir: dir.to_path_buf(),
            key,
            segment_max_bytes: segment_max_bytes.max(1),
            open: None,
            sealed: VecDeque::new(),
            next_index: 0,
            last_hash: GENESIS.to_string(),
            seen: HashMap::new(),
            checkpoints,
            checkpoint_seq,
            checkpoint_prev,
            checkpointed: None,
            broken: None,
        };

        let files = segment_files(dir)?;
        let count = files.len();
        for (n, path) in files.into_iter().enumerate() {
            let last = n + 1 == count;
            let name = file_name(&path);
            let scan = store.load_segment(&path, last)?;
            if last {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {} to append", path.display()))?;
                store.open = Some(OpenSegment {
                    name,
                    file,
                    len: scan.len,
                    first_index: scan.first_index.unwrap_or(store.next_index),
                    first_prev: scan.first_prev.unwrap_or_else(|| store.last_hash.clone()),
                });
            } else {
                let sealed_at = sealed_times
                    .iter()
                    .rev()
                    .find(|(segment, _)| *segment == name)
                    .map(|(_, time)| *time)
                    .unwrap_or_else(|| modified(&path));
                store.sealed.push_back(SealedSegment {
                    name,
                    bytes: scan.len,
                    sealed_at,
                    first_index: scan.first_index.unwrap_or(store.next_index),
                    last_index: store.next_index.saturating_sub(1),
                    last_hash: store.last_hash.clone(),
                });
            }
        }
        if store.open.is_none() {
            store.open_segment()?;
        }
        Ok(store)
    }

    /// Reads one segment: its ids into the dedup set, its last record into the chain state.
    fn load_segment(&mut self, path: &Path, last: bool) -> Result<SegmentScan> {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("reading {}", path.display()))?;
        let mut complete = bytes.len();
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            if !last {
                bail!(
                    "{} ends in a partial record although it is not the newest segment; run \
                     `streamward-collector verify` on this data folder",
                    path.display()
                );
            }
            tracing::warn!(
                segment = %path.display(),
                bytes = bytes.len() - complete,
                "cutting off a partial record that was never acknowledged"
            );
            let file = OpenOptions::new().write(true).open(path)?;
            file.set_len(complete as u64)?;
            file.sync_all()?;
        }
        let mut scan = SegmentScan {
            len: complete as u64,
            first_index: None,
            first_prev: None,
        };
        let lines: Vec<&[u8]> = bytes[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let total = lines.len();
        for (n, line) in lines.into_iter().enumerate() {
            match chain::decode(line) {
                Ok(record) => {
                    if scan.first_index.is_none() {
                        scan.first_index = Some(record.index);
                        scan.first_prev = Some(record.prev.clone());
                    }
                    if let (Some(id), Some(json)) = (
                        record.event.get("id").and_then(|v| v.as_str()),
                        chain::event_bytes(line),
                    ) {
                        self.seen
                            .entry(stored_identity(&record.event))
                            .or_default()
                            .insert(id.to_string(), digest(json));
                    }
                    self.next_index = record.index + 1;
                    self.last_hash = record.hash;
                }
                Err(broken) if n + 1 < total => {
                    tracing::error!(
                        segment = %path.display(),
                        line = n + 1,
                        damage = %broken.damage,
                        "a stored record is damaged; run `streamward-collector verify`"
                    );
                }
                Err(broken) => bail!(
                    "the newest record ({} line {}) is damaged ({}), so the chain cannot be \
                     continued; run `streamward-collector verify` on this data folder",
                    path.display(),
                    n + 1,
                    broken.damage
                ),
            }
        }
        Ok(scan)
    }

    fn open_segment(&mut self) -> Result<()> {
        self.open = Some(self.create_segment()?);
        Ok(())
    }

    /// Creates (durably) the segment that begins at the next index.
    fn create_segment(&self) -> Result<OpenSegment> {
        let name = segment_name(self.next_index);
        let path = self.dir.join(SEGMENTS).join(&name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating segment {}", path.display()))?;
        File::open(self.dir.join(SEGMENTS))
            .and_then(|d| d.sync_all())
            .context("syncing the segments folder")?;
        Ok(OpenSegment {
            name,
            file,
            len: 0,
            first_index: self.next_index,
            first_prev: self.last_hash.clone(),
        })
    }

    /// The public key that verifies this store's checkpoints.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Whether `identity` has stored `id`.
    pub fn contains(&self, identity: &str, id: &str) -> bool {
        self.seen
            .get(identity)
            .is_some_and(|ids| ids.contains_key(id))
    }

    /// Sealed segments held.
    pub fn sealed_segments(&self) -> usize {
        self.sealed.len()
    }

    /// Records stored so far (including those retention removed).
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Appends batches durably (written and fdatasynced) and says, per batch, how many events
    /// were new, how many were stored already (the same identity, id and content: a retry), and
    /// which were refused because their identity stored the id with other content. On error
    /// nothing of the group is stored.
    pub fn append(&mut self, batches: &[Vec<Prepared>]) -> Result<Vec<Appended>> {
        if let Some(reason) = &self.broken {
            bail!("the store stopped accepting events after an earlier failure: {reason}");
        }
        if self
            .open
            .as_ref()
            .is_some_and(|s| s.len >= self.segment_max_bytes)
        {
            self.seal()?;
        }
        let mut results = Vec::with_capacity(batches.len());
        let mut fresh: HashMap<(&str, &str), Digest> = HashMap::new();
        let mut buffer = String::new();
        let mut index = self.next_index;
        let mut hash = self.last_hash.clone();
        for batch in batches {
            let mut result = Appended::default();
            for (position, event) in batch.iter().enumerate() {
                let content = event.digest;
                let earlier = self
                    .seen
                    .get(&event.identity)
                    .and_then(|ids| ids.get(&event.id))
                    .or_else(|| fresh.get(&(event.identity.as_str(), event.id.as_str())));
                match earlier {
                    Some(stored) if *stored == content => {
                        result.duplicates += 1;
                        continue;
                    }
                    Some(stored) => {
                        result.conflicts.push(Conflict {
                            position,
                            stored_sha256: hex::encode(stored),
                            refused_sha256: hex::encode(content),
                        });
                        continue;
                    }
                    None => {}
                }
                fresh.insert((&event.identity, &event.id), content);
                let (line, next) = chain::encode(index, &hash, &event.json);
                buffer.push_str(&line);
                buffer.push('\n');
                index += 1;
                hash = next;
                result.accepted += 1;
                result.stored.push(position);
            }
            results.push(result);
        }
        if buffer.is_empty() {
            return Ok(results);
        }
        let Some(open) = self.open.as_mut() else {
            bail!("no open segment");
        };
        let written = open
            .file
            .write_all(buffer.as_bytes())
            .and_then(|()| open.file.sync_data());
        if let Err(error) = written {
            // Take back whatever part reached the file, so the chain stays whole.
            let undo = open
                .file
                .set_len(open.len)
                .and_then(|()| open.file.seek(SeekFrom::End(0)).map(|_| ()));
            if let Err(undo) = undo {
                self.broken = Some(format!(
                    "appending to {} failed ({error}) and cutting the partial write failed too \
                     ({undo})",
                    open.name
                ));
            }
            return Err(error).with_context(|| format!("appending to segment {}", open.name));
        }
        open.len += buffer.len() as u64;
        self.next_index = index;
        self.last_hash = hash;
        for ((identity, id), content) in fresh {
            self.seen
                .entry(identity.to_string())
                .or_default()
                .insert(id.to_string(), content);
        }
        Ok(results)
    }

    /// Writes a signed checkpoint of the open segment if records arrived since the last one.
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.next_index == 0 || self.checkpointed == Some(self.next_index - 1) {
            return Ok(());
        }
        self.write_checkpoint(false)
    }

    fn write_checkpoint(&mut self, sealed: bool) -> Result<()> {
        let Some(open) = &self.open else {
            return Ok(());
        };
        if self.next_index == open.first_index {
            return Ok(());
        }
        let checkpoint = Checkpoint {
            segment: open.name.clone(),
            first_index: open.first_index,
            last_index: self.next_index - 1,
            first_prev: open.first_prev.clone(),
            last_hash: self.last_hash.clone(),
            sealed,
            removed: false,
            stopped: false,
            seq: None,
            prev: None,
            time: Timestamp::now(),
            signature: String::new(),
        };
        self.append_checkpoint(checkpoint)?;
        self.checkpointed = Some(self.next_index - 1);
        Ok(())
    }

    /// Signs the last checkpoint of this run, marked `stopped`: whatever the store held then
    /// is covered, and a store that no longer ends in such a checkpoint was cut back (or the
    /// collector did not stop cleanly). An empty store gets none.
    pub fn stop(&mut self) -> Result<()> {
        let Some(open) = &self.open else {
            return Ok(());
        };
        let Some(last_index) = self.next_index.checked_sub(1) else {
            return Ok(());
        };
        let checkpoint = Checkpoint {
            segment: open.name.clone(),
            first_index: open.first_index,
            // `first_index - 1` when the open segment is still empty.
            last_index,
            first_prev: open.first_prev.clone(),
            last_hash: self.last_hash.clone(),
            sealed: false,
            removed: false,
            stopped: true,
            seq: None,
            prev: None,
            time: Timestamp::now(),
            signature: String::new(),
        };
        self.append_checkpoint(checkpoint)?;
        self.checkpointed = Some(last_index);
        Ok(())
    }

    fn append_checkpoint(&mut self, mut checkpoint: Checkpoint) -> Result<()> {
        checkpoint.seq = Some(self.checkpoint_seq);
        checkpoint.prev = Some(self.checkpoint_prev.clone());
        self.key.sign(&mut checkpoint);
        let line = serde_json::to_string(&checkpoint)?;
        self.checkpoints
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.checkpoints.sync_data())
            .context("writing a checkpoint")?;
        self.checkpoint_seq += 1;
        self.checkpoint_prev = chain::sha256_hex(line.as_bytes());
        Ok(())
    }

    /// Closes the open segment with a sealed checkpoint and starts the next one. The next
    /// segment's file exists (durably) before the sealed checkpoint is written, so a sealed
    /// segment always has a successor: `verify` can tell a removed newest segment.
    pub fn seal(&mut self) -> Result<()> {
        let Some(open) = &self.open else {
            return Ok(());
        };
        if open.len == 0 {
            return Ok(());
        }
        let next = self.create_segment()?;
        self.write_checkpoint(true)?;
        if let Some(open) = self.open.replace(next) {
            self.sealed.push_back(SealedSegment {
                name: open.name,
                bytes: open.len,
                sealed_at: Timestamp::now(),
                first_index: open.first_index,
                last_index: self.next_index - 1,
                last_hash: self.last_hash.clone(),
            });
        }
        Ok(())
    }

    /// Removes the oldest sealed segments that `retention` no longer keeps. The chain stays
    /// verifiable: the sealed checkpoint of each removed segment stays in the checkpoints file
    /// and anchors the first record that is left. Returns the names removed.
    pub fn apply_retention(&mut self, retention: Retention) -> Result<Vec<String>> {
        let now = Timestamp::now();
        let mut total: u64 = self.sealed.iter().map(|s| s.bytes).sum::<u64>()
            + self.open.as_ref().map_or(0, |o| o.len);
        let mut removed = Vec::new();
        let mut last_removed = None;
        while let Some(oldest) = self.sealed.front() {
            let too_old = retention.max_age.is_some_and(|age| {
                now.duration_since(oldest.sealed_at)
                    .try_into()
                    .is_ok_and(|elapsed: std::time::Duration| elapsed > age)
            });
            let too_big = retention.max_bytes.is_some_and(|max| total > max);
            if !too_old && !too_big {
                break;
            }
            let path = self.dir.join(SEGMENTS).join(&oldest.name);
            // Forget its ids first: an event that is no longer stored may be stored again.
            if let Ok(bytes) = std::fs::read(&path) {
                for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if let Ok(record) = chain::decode(line)
                        && let Some(id) = record.event.get("id").and_then(|v| v.as_str())
                    {
                        let identity = stored_identity(&record.event);
                        if let Some(ids) = self.seen.get_mut(&identity) {
                            ids.remove(id);
                            if ids.is_empty() {
                                self.seen.remove(&identity);
                            }
                        }
                    }
                }
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("removing segment {}", path.display()))?;
            // Its query index goes with it (it may never have been made).
            let _ = std::fs::remove_file(crate::index::SegmentIndex::path(&path));
            total -= oldest.bytes;
            removed.push(oldest.name.clone());
            last_removed = self.sealed.pop_front();
        }
        // Say, signed, what retention removed: verify accepts a missing beginning only up to
        // here, so deleting another segment by hand is still found.
        if let Some(segment) = last_removed {
            self.append_checkpoint(Checkpoint {
                segment: segment.name,
                first_index: segment.first_index,
                last_index: segment.last_index,
                first_prev: String::new(),
                last_hash: segment.last_hash,
                sealed: true,
                removed: true,
                stopped: false,
                seq: None,
                prev: None,
                time: now,
                signature: String::new(),
            })?;
        }
        Ok(removed)
    }
}

struct SegmentScan {
    len: u64,
    first_index: Option<u64>,
    first_prev: Option<String>,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn modified(path: &Path) -> Timestamp {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| Timestamp::try_from(t).ok())
        .unwrap_or_else(Timestamp::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHO: &str = "shop/orders-app";

    fn prepared(id: &str) -> Prepared {
        prepared_as(WHO, id, "Allow")
    }

    fn prepared_as(identity: &str, id: &str, effect: &str) -> Prepared {
        let (namespace, service_account) = identity.split_once('/').unwrap();
        Prepared::new(
            identity.into(),
            id.into(),
            format!(
                r#"{{"id":"{id}","data":{{"identity":{{"namespace":"{namespace}","serviceAccount":"{service_account}"}},"effect":"{effect}"}}}}"#
            ),
        )
    }

    #[test]
    fn appends_survive_a_reopen_and_duplicates_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let mut store = Store::open(dir.path(), &key, 1 << 20).unwrap();
        let result = store
            .append(&[vec![prepared("a:1"), prepared("a:2"), prepared("a:1")]])
            .unwrap();
        assert_eq!(
            result,
            vec![Appended {
                accepted: 2,
                duplicates: 1,
                stored: vec![0, 1],
                conflicts: vec![],
            }]
        );
        drop(store);
        let mut store = Store::open(dir.path(), &key, 1 << 20).unwrap();
        assert!(store.contains(WHO, "a:2"));
        assert!(!store.contains("shop/billing", "a:2"));
        let result = store
            .append(&[vec![prepared("a:2")], vec![prepared("a:3")]])
            .unwrap();
        assert_eq!(result[0].duplicates, 1);
        assert_eq!(result[1].accepted, 1);
        assert_eq!(store.next_index(), 3);
    }

    #[test]
    fn a_partial_last_line_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let mut store = Store::open(dir.path(), &key, 1 << 20).unwrap();
        store.append(&[vec![prepared("a:1")]]).unwrap();
        drop(store);
        let segment = segment_files(dir.path()).unwrap().remove(0);
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(b"{\"i\":1,\"prev\":\"00").unwrap();
        drop(file);
        let mut store = Store::open(dir.path(), &key, 1 << 20).unwrap();
        store.append(&[vec![prepared("a:2")]]).unwrap();
        let text = std::fs::read_to_string(&segment).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| chain::decode(l.as_bytes()).is_ok()));
    }

    #[test]
    fn segments_rotate_and_retention_removes_the_oldest_whole() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let mut store = Store::open(dir.path(), &key, 100).unwrap();
        for n in 0..5 {
            store.append(&[vec![prepared(&format!("a:{n}"))]]).unwrap();
        }
        let files = segment_files(dir.path()).unwrap();
        assert_eq!(files.len(), 5);
        // Every segment holds one record of the same size: keep two and a half of them.
        let one = std::fs::metadata(&files[0]).unwrap().len();
        let removed = store
            .apply_retention(Retention {
                max_age: None,
                max_bytes: Some(2 * one + one / 2),
            })
            .unwrap();
        assert_eq!(removed.len(), 3);
        assert!(!store.contains(WHO, "a:0"));
        assert!(store.contains(WHO, "a:4"));
        assert_eq!(segment_files(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn ids_are_unique_per_identity_and_other_content_under_a_stored_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let mut store = Store::open(dir.path(), &key, 1 << 20).unwrap();
        let result = store
            .append(&[vec![
                prepared_as("shop/billing", "v:1", "Allow"),
                prepared_as(WHO, "v:1", "Deny"),
                prepared_as(WHO, "v:1", "Allow"),
            ]])
            .unwrap();
        assert_eq!((result[0].accepted, result[0].duplicates), (2, 0));
        assert_eq!(result[0].conflicts.len(), 1);
        assert_eq!(result[0].conflicts[0].position, 2);
        drop(store);
        let mut store = Store::open(dir.path(), &key, 1 << 20).unwrap();
        let result = store
            .append(&[vec![
                prepared_as(WHO, "v:1", "Deny"),
                prepared_as(WHO, "v:1", "Allow"),
            ]])
            .unwrap();
        assert_eq!((result[0].accepted, result[0].duplicates), (0, 1));
        assert_eq!(result[0].conflicts.len(), 1);
        assert_ne!(
            result[0].conflicts[0].stored_sha256,
            result[0].conflicts[0].refused_sha256
        );
    }
}
