//! OCI images of Streamward's three programs, written without a container daemon.
//!
//! The machines that build Streamward (CI included) have no container daemon, and the tools
//! that assemble images without one (umoci, skopeo, crane) are more to install than the format
//! is to write: one of our images is a single gzip layer, a config, a manifest and an index.
//! So this module writes the [OCI image layout] itself, reproducibly: the same binary and the
//! same host libraries give the same bytes and so the same digests. The four JSON documents are
//! small serde structs here rather than the `oci-spec` crate's, which would bring
//! `derive_builder` (with a second `darling`), `getset`, `strum` and `const_format` for them.
//!
//! An image holds only what its program needs to run: the stripped binary at
//! `/usr/local/bin/<name>`; the shared libraries `ldd` says it loads, at the paths the loader
//! looks them up by, and the loader itself at the binary's interpreter path; `/etc/passwd` and
//! `/etc/group` with `root` and `nonroot` (65532); the host's CA bundle; an empty `/tmp`. No
//! shell, no package manager. The program runs as `65532:65532`.
//!
//! Each image is packed into `<out>/<name>-<version>.oci.tar` (an OCI layout in a tar, which
//! `ctr -n k8s.io images import` names `ghcr.io/streamward/<name>:<version>`), and
//! `<out>/images.json` lists them all. An archive is rewritten only when its inputs changed.
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use flate2::{Compression, GzBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clients;
use crate::process::run;

/// The programs that get an image, by binary (and image) name.
pub const PROGRAMS: [&str; 3] = [
    "streamward-operator",
    "streamward-sidecar",
    "streamward-collector",
];

/// The workspace version: every image is tagged with it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the images are named to come from. The operator's `--proxy-image` default uses the same.
pub const REGISTRY: &str = "ghcr.io/streamward";

/// The user and group the programs run as (distroless's `nonroot`).
pub const NONROOT: &str = "65532:65532";

/// Where a program's binary sits in its image.
pub const BINARY_DIR: &str = "usr/local/bin";

/// The file, in `out_dir`, that lists the built images.
pub const LISTING: &str = "images.json";

/// Bumped whenever this writer changes what it writes, so that archives from an older writer are
/// not reused.
const WRITER_REVISION: u32 = 1;

/// The host's CA bundle (Debian's `ca-certificates`), copied into every image at the same path.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                      nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnonroot:x:65532:\n";

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One image written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltImage {
    /// The program, e.g. `streamward-sidecar`.
    pub name: String,
    /// The image reference, e.g. `ghcr.io/streamward/streamward-sidecar:0.1.0`.
    pub reference: String,
    /// The manifest's digest, `sha256:<hex>`.
    pub manifest_digest: String,
    /// The OCI layout, packed in a tar.
    pub archive: PathBuf,
    /// What a registry would transfer: the manifest, the config and the gzip layer, in bytes.
    pub compressed_bytes: u64,
    /// Whether the archive of an earlier run was kept because its inputs had not changed.
    #[serde(skip)]
    pub reused: bool,
}

/// `ghcr.io/streamward/<name>:<version>`.
pub fn reference(name: &str) -> String {
    format!("{REGISTRY}/{name}:{VERSION}")
}

/// `<name>-<version>.oci.tar`.
pub fn archive_name(name: &str) -> String {
    format!("{name}-{VERSION}.oci.tar")
}

/// Builds the image of every program in [`PROGRAMS`] from the binaries in `binaries_dir` (a
/// cargo `target/release`) into `out_dir`, and lists them in `out_dir/images.json`.
pub fn build_all(binaries_dir: &Path, out_dir: &Path) -> Result<Vec<BuiltImage>> {
    let images = PROGRAMS
        .iter()
        .map(|name| build(name, binaries_dir, out_dir))
        .collect::<Result<Vec<_>>>()?;
    let listing = out_dir.join(LISTING);
    let json = serde_json::to_vec_pretty(&images).context("serialising the image listing")?;
    write_atomically(&listing, &json)?;
    Ok(images)
}

/// Builds the image of program `name` from `binaries_dir/name` into `out_dir`, unless the
/// archive an earlier run wrote there was made from the same inputs.
pub fn build(name: &str, binaries_dir: &Path, out_dir: &Path) -> Result<BuiltImage> {
    let binary = binaries_dir.join(name);
    ensure!(
        binary.is_file(),
        "{} does not exist: build it first (cargo build --release -p {name} --bin {name})",
        binary.display()
    );
    fs::create_dir_all(out_dir)
        .with_context(|| format!("creating the image folder {}", out_dir.display()))?;
    // Two builds into one folder (a test and `just images`) take turns.
    let lock_path = out_dir.join(format!(".{name}.lock"));
    let lock = File::create(&lock_path)
        .with_context(|| format!("creating lock file {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;

    let libraries = shared_libraries(&binary)?;
    let ca_bundle = ca_bundle()?;
    let epoch = source_date_epoch()?;
    let inputs = inputs_digest(name, epoch, &binary, &libraries, &ca_bundle)?;

    let archive = out_dir.join(archive_name(name));
    let stamp_path = out_dir.join(format!("{}.inputs.json", archive_name(name)));
    if let Some(stamp) = Stamp::read(&stamp_path).filter(|s| s.inputs == inputs)
        && fs::metadata(&archive).is_ok_and(|m| m.len() == stamp.archive_bytes)
    {
        return Ok(BuiltImage {
            name: name.to_string(),
            reference: reference(name),
            manifest_digest: stamp.manifest_digest,
            archive,
            compressed_bytes: stamp.compressed_bytes,
            reused: true,
        });
    }

    let stripped = strip(&binary, out_dir)?;
    let mut root = RootFs::default();
    root.file(&format!("{BINARY_DIR}/{name}"), 0o755, stripped)?;
    for library in &libraries {
        let bytes = fs::read(library)
            .with_context(|| format!("reading shared library {}", library.display()))?;
        root.file(&path_in_image(library)?, 0o755, bytes)?;
    }
    root.file("etc/passwd", 0o644, PASSWD.as_bytes().to_vec())?;
    root.file("etc/group", 0o644, GROUP.as_bytes().to_vec())?;
    let certs = fs::read(&ca_bundle).with_context(|| format!("reading {}", ca_bundle.display()))?;
    root.file(&path_in_image(&ca_bundle)?, 0o644, certs)?;
    root.dir("tmp", 0o1777)?;

    let layout = Layout::new(name, root, epoch)?;
    let compressed_bytes = layout.compressed_bytes();
    let manifest_digest = layout.manifest_digest.clone();
    let archive_bytes = layout.write(&archive, epoch)?;
    let stamp = Stamp {
        inputs,
        manifest_digest: manifest_digest.clone(),
        compressed_bytes,
        archive_bytes,
    };
    let json = serde_json::to_vec_pretty(&stamp).context("serialising the inputs stamp")?;
    write_atomically(&stamp_path, &json)?;
    Ok(BuiltImage {
        name: name.to_string(),
        reference: reference(name),
        manifest_digest,
        archive,
        compressed_bytes,
        reused: false,
    })
}

/// What an archive was built from, kept next to it so that a warm run can skip the work.
#[derive(Serialize, Deserialize)]
struct Stamp {
    inputs: String,
    manifest_digest: String,
    compressed_bytes: u64,
    archive_bytes: u64,
}

impl Stamp {
    /// The stamp at `path`; `None` when there is none or it cannot be read (then we rebuild).
    fn read(path: &Path) -> Option<Stamp> {
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }
}

/// The digest of everything that goes into an image: a changed binary, library, CA bundle,
/// timestamp or writer gives a different value.
fn inputs_digest(
    name: &str,
    epoch: u64,
    binary: &Path,
    libraries: &[PathBuf],
    ca_bundle: &Path,
) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "writer {WRITER_REVISION}\n{name} {VERSION}\nepoch {epoch}\n"
    ));
    for path in std::iter::once(binary)
        .chain(libraries.iter().map(PathBuf::as_path))
        .chain([ca_bundle])
    {
        hasher.update(format!("{} {}\n", path.display(), file_digest(path)?));
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `sha256:<hex>` of a file, read in chunks (release binaries with line tables are large).
fn file_digest(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// `sha256:<hex>` of some bytes.
fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `$SOURCE_DATE_EPOCH` (the reproducible-builds convention) or 0: every timestamp in the image.
fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

/// The host's CA bundle, installing Debian's `ca-certificates` when it is missing.
fn ca_bundle() -> Result<PathBuf> {
    let path = PathBuf::from(CA_BUNDLE);
    if !path.is_file() {
        clients::install_debian_packages(&["ca-certificates"])?;
    }
    ensure!(
        path.is_file(),
        "{CA_BUNDLE} is missing even after installing ca-certificates"
    );
    Ok(path)
}

/// The shared libraries `binary` loads and its dynamic loader, at the paths the loader finds
/// them by (`ldd` follows the binary's `NEEDED` entries and `PT_INTERP` the way `ld.so` does).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = run("ldd", Command::new("ldd").arg(binary))
        .with_context(|| format!("listing the shared libraries of {}", binary.display()))?;
    parse_ldd(&String::from_utf8_lossy(&output.stdout))
        .with_context(|| format!("reading ldd's output for {}", binary.display()))
}

/// The library paths in `ldd` output. The interpreter line (`/lib64/ld-linux-x86-64.so.2
/// (0x…)`) names the loader at its `PT_INTERP` path; `libc.so.6 => /lib/…/libc.so.6 (0x…)` names
/// a `NEEDED` library where the loader found it; the vDSO has no file.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let without_address = |s: &str| s.split(" (0x").next().unwrap_or(s).trim().to_string();
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (needed, found) = match line.split_once("=>") {
            Some((needed, found)) => (needed.trim(), Some(found.trim())),
            None => (line, None),
        };
        let path = if needed.starts_with('/') {
            without_address(needed)
        } else {
            match found {
                Some(found) if found.starts_with("not found") => {
                    bail!("{needed} is needed but the loader cannot find it")
                }
                Some(found) if found.starts_with('/') => without_address(found),
                // linux-vdso.so.1, "statically linked"
                _ => continue,
            }
        };
        if !paths
            .iter()
            .any(|p: &PathBuf| p.as_os_str() == path.as_str())
        {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// `/lib/x86_64-linux-gnu/libc.so.6` → `lib/x86_64-linux-gnu/libc.so.6` (tar paths are relative).
fn path_in_image(path: &Path) -> Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    let relative = text.trim_start_matches('/');
    ensure!(
        text.starts_with('/') && !relative.is_empty() && !relative.split('/').any(|c| c == ".."),
        "{text} is not a plain absolute path"
    );
    Ok(relative.to_string())
}

/// A stripped copy of `binary`: debug sections and symbols are a third of a release binary and
/// no use in an image. Written to a scratch file in `scratch_dir`, returned as bytes.
fn strip(binary: &Path, scratch_dir: &Path) -> Result<Vec<u8>> {
    let scratch = tempfile::NamedTempFile::new_in(scratch_dir)
        .with_context(|| format!("creating a scratch file in {}", scratch_dir.display()))?;
    run(
        "strip",
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(scratch.path())
            .arg(binary),
    )
    .with_context(|| format!("stripping {} (strip is in binutils)", binary.display()))?;
    fs::read(scratch.path()).with_context(|| format!("reading {}", scratch.path().display()))
}

/// A file-system tree, written as a tar whose bytes depend only on its contents.
#[derive(Default)]
struct RootFs {
    /// Relative paths without a trailing slash. Sorted, so a folder comes before its contents.
    nodes: BTreeMap<String, Node>,
}

enum Node {
    Dir { mode: u32 },
    File { mode: u32, bytes: Vec<u8> },
}

impl RootFs {
    /// Adds a file (and its missing parent folders, mode 0755).
    fn file(&mut self, path: &str, mode: u32, bytes: Vec<u8>) -> Result<()> {
        self.parents(path)?;
        self.nodes
            .insert(path.to_string(), Node::File { mode, bytes });
        Ok(())
    }

    /// Adds a folder (and its missing parent folders, mode 0755).
    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.parents(path)?;
        self.nodes.insert(path.to_string(), Node::Dir { mode });
        Ok(())
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        ensure!(
            !path.is_empty() && !path.starts_with('/') && !path.ends_with('/'),
            "{path:?} is not a relative path to an entry"
        );
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            let parent = &path[..end];
            match self.nodes.get(parent) {
                Some(Node::File { .. }) => bail!("{parent} is a file, so {path} cannot be added"),
                Some(Node::Dir { .. }) => {}
                None => {
                    self.nodes
                        .insert(parent.to_string(), Node::Dir { mode: 0o755 });
                }
            }
            end += 1;
        }
        Ok(())
    }

    /// Writes the tree as a tar: entries in path order, owned by root, every timestamp `mtime`.
    fn write_tar<W: Write>(&self, out: W, mtime: u64) -> Result<W> {
        let mut tar = tar::Builder::new(out);
        for (path, node) in &self.nodes {
            let mut header = tar::Header::new_ustar();
            header.set_uid(0);
            header.set_gid(0);
            header.set_username("root")?;
            header.set_groupname("root")?;
            header.set_mtime(mtime);
            match node {
                Node::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{path}/"), io::empty())
                }
                Node::File { mode, bytes } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(bytes.len() as u64);
                    tar.append_data(&mut header, path, bytes.as_slice())
                }
            }
            .with_context(|| format!("adding {path} to a tar"))?;
        }
        tar.into_inner().context("finishing a tar")
    }
}

/// A blob of the layout, addressed by its digest.
struct Blob {
    media_type: &'static str,
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type,
            digest: digest(&bytes),
            bytes,
        }
    }

    fn json(media_type: &'static str, document: &impl Serialize) -> Result<Blob> {
        let bytes = serde_json::to_vec(document)
            .with_context(|| format!("serialising a {media_type} document"))?;
        Ok(Blob::new(media_type, bytes))
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type,
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// The OCI layout of one image: its blobs and its `index.json`.
struct Layout {
    blobs: Vec<Blob>,
    manifest_digest: String,
    index: Vec<u8>,
}

impl Layout {
    /// Packs `root` as the single layer of program `name`'s image.
    fn new(name: &str, root: RootFs, epoch: u64) -> Result<Layout> {
        let tar = root.write_tar(Vec::new(), epoch)?;
        let diff_id = digest(&tar);
        // No file name and a fixed time in the gzip header: the bytes depend on the tar only.
        let mut gzip = GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), Compression::best());
        gzip.write_all(&tar).context("compressing the layer")?;
        let layer = Blob::new(MEDIA_LAYER, gzip.finish().context("compressing the layer")?);
        drop(tar);

        let labels = BTreeMap::from([
            ("org.opencontainers.image.title", name.to_string()),
            ("org.opencontainers.image.version", VERSION.to_string()),
            (
                "org.opencontainers.image.source",
                env!("CARGO_PKG_REPOSITORY").to_string(),
            ),
            (
                "org.opencontainers.image.licenses",
                env!("CARGO_PKG_LICENSE").to_string(),
            ),
        ]);
        let config = Blob::json(
            MEDIA_CONFIG,
            &ImageConfiguration {
                architecture: "amd64",
                os: "linux",
                config: RunConfig {
                    user: NONROOT,
                    env: vec![format!("PATH=/{BINARY_DIR}")],
                    entrypoint: vec![format!("/{BINARY_DIR}/{name}")],
                    labels,
                },
                rootfs: RootFsConfig {
                    kind: "layers",
                    diff_ids: vec![diff_id],
                },
            },
        )?;
        let manifest = Blob::json(
            MEDIA_MANIFEST,
            &ImageManifest {
                schema_version: 2,
                media_type: MEDIA_MANIFEST,
                config: config.descriptor(),
                layers: vec![layer.descriptor()],
            },
        )?;
        let mut manifest_descriptor = manifest.descriptor();
        manifest_descriptor.platform = Some(Platform {
            architecture: "amd64",
            os: "linux",
        });
        // `ref.name` is the tag, as the spec has it; containerd's import names the image by
        // `io.containerd.image.name` when it is there.
        manifest_descriptor.annotations = BTreeMap::from([
            ("io.containerd.image.name", reference(name)),
            ("org.opencontainers.image.ref.name", VERSION.to_string()),
        ]);
        let index = serde_json::to_vec(&ImageIndex {
            schema_version: 2,
            media_type: MEDIA_INDEX,
            manifests: vec![manifest_descriptor],
        })
        .context("serialising index.json")?;
        Ok(Layout {
            manifest_digest: manifest.digest.clone(),
            blobs: vec![layer, config, manifest],
            index,
        })
    }

    /// The bytes a registry would transfer: every blob.
    fn compressed_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.bytes.len() as u64).sum()
    }

    /// Writes the layout as a tar at `archive` (whole or not at all); returns its size.
    fn write(self, archive: &Path, epoch: u64) -> Result<u64> {
        let mut tree = RootFs::default();
        tree.file(
            "oci-layout",
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        )?;
        tree.file("index.json", 0o644, self.index)?;
        for blob in self.blobs {
            let hex = blob.digest.trim_start_matches("sha256:");
            tree.file(&format!("blobs/sha256/{hex}"), 0o644, blob.bytes)?;
        }
        let partial = archive.with_extension("tar.partial");
        let file =
            File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let mut out = tree.write_tar(BufWriter::new(file), epoch)?;
        out.flush()
            .with_context(|| format!("writing {}", partial.display()))?;
        drop(out);
        fs::rename(&partial, archive)
            .with_context(|| format!("moving {} into place", partial.display()))?;
        Ok(fs::metadata(archive)
            .with_context(|| format!("reading the size of {}", archive.display()))?
            .len())
    }
}

/// Writes `bytes` to `path` through a scratch file, so readers never see half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension("partial");
    fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, path).with_context(|| format!("moving {} into place", path.display()))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct Platform {
    architecture: &'static str,
    os: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageIndex {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
struct ImageConfiguration {
    architecture: &'static str,
    os: &'static str,
    config: RunConfig,
    rootfs: RootFsConfig,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    user: &'static str,
    env: Vec<String>,
    entrypoint: Vec<String>,
    labels: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct RootFsConfig {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_loader_at_its_interpreter_path_and_libraries_where_found() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd2d5f4000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0e1c200000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1c000000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1c4a0000)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
        let interp_resolved =
            "\t/lib64/ld-linux-x86-64.so.2 => /usr/lib64/ld-linux-x86-64.so.2 (0x1)\n";
        assert_eq!(
            parse_ldd(interp_resolved).unwrap(),
            [PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn a_missing_library_is_an_error() {
        let error = parse_ldd("\tlibssl.so.3 => not found\n").unwrap_err();
        assert!(error.to_string().contains("libssl.so.3"), "{error}");
    }

    #[test]
    fn the_tar_lists_folders_before_their_contents_and_depends_only_on_the_tree() {
        let tree = || {
            let mut root = RootFs::default();
            root.file("usr/local/bin/x", 0o755, b"x".to_vec()).unwrap();
            root.file("etc/passwd", 0o644, b"p".to_vec()).unwrap();
            root.dir("tmp", 0o1777).unwrap();
            root
        };
        let first = tree().write_tar(Vec::new(), 0).unwrap();
        assert_eq!(first, tree().write_tar(Vec::new(), 0).unwrap());
        let mut archive = tar::Archive::new(first.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                (path, e.header().mode().unwrap())
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("etc/", 0o755),
                ("etc/passwd", 0o644),
                ("tmp/", 0o1777),
                ("usr/", 0o755),
                ("usr/local/", 0o755),
                ("usr/local/bin/", 0o755),
                ("usr/local/bin/x", 0o755),
            ]
            .map(|(p, m)| (p.to_string(), m))
        );
    }

    #[test]
    fn a_path_cannot_climb_out_of_the_image() {
        assert_eq!(
            path_in_image(Path::new("/lib64/ld-linux-x86-64.so.2")).unwrap(),
            "lib64/ld-linux-x86-64.so.2"
        );
        assert!(path_in_image(Path::new("/lib/../../etc/shadow")).is_err());
        assert!(path_in_image(Path::new("relative.so")).is_err());
    }
}
