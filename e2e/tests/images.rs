//! The images `just images` builds, read back from their archives (not from what the writer
//! says it wrote): the layout's digests and sizes hold, the config runs the program as
//! 65532:65532, the layer holds the program, its libraries and a few files of `/etc` and
//! nothing to get a shell or install packages with, and the entry point runs in a chroot of the
//! unpacked layer as the non-root user.
//!
//! Needs root (for `chroot`), as CI has.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use flate2::read::GzDecoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use streamward_e2e::image::{self, BuiltImage, PROGRAMS, VERSION};
use streamward_e2e::{cache, process::run};

/// The size target for the proxy image, compressed.
const SIDECAR_MAX_COMPRESSED_BYTES: u64 = 10_000_000;

/// The release binaries, built as `just images` builds them; returns `<target>/release`.
fn release_binaries() -> PathBuf {
    let mut cargo = streamward_e2e::cargo();
    cargo.args(["build", "-q", "--release"]);
    for program in PROGRAMS {
        cargo.args(["-p", program]);
    }
    for program in PROGRAMS {
        cargo.args(["--bin", program]);
    }
    run(
        "cargo build --release",
        cargo.current_dir(cache::source_root()),
    )
    .unwrap();
    // <target>/debug/deps/<this test> → <target>/release
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().join("release")
}

struct Built {
    binaries: PathBuf,
    out: tempfile::TempDir,
    images: Vec<BuiltImage>,
}

/// The images, built once for every test here.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let started = Instant::now();
        let binaries = release_binaries();
        eprintln!("release binaries built in {:.1?}", started.elapsed());
        let started = Instant::now();
        let out = tempfile::tempdir().unwrap();
        let images = image::build_all(&binaries, out.path()).unwrap();
        eprintln!("images built in {:.1?}", started.elapsed());
        for built in &images {
            eprintln!(
                "{:<48} {:>7.2} MB compressed  {}",
                built.reference,
                built.compressed_bytes as f64 / 1e6,
                built.manifest_digest
            );
        }
        Built {
            binaries,
            out,
            images,
        }
    })
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Every regular file of a tar, by path.
fn files_of(tar_bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let path = entry.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            files.insert(path, bytes);
        }
    }
    files
}

/// The blob a descriptor points at, checked against the descriptor's digest and size.
fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, descriptor: &Value) -> &'a [u8] {
    let digest = descriptor["digest"].as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let bytes = files
        .get(&format!("blobs/sha256/{hex}"))
        .unwrap_or_else(|| panic!("no blob for {digest}"));
    assert_eq!(
        sha256(bytes),
        digest,
        "blob content does not match its name"
    );
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(bytes.len() as u64),
        "size of {digest}"
    );
    bytes
}

/// Checks index → manifest → config of one archive; returns the uncompressed layer tar.
fn check_layout(built: &BuiltImage) -> Vec<u8> {
    let name = &built.name;
    let files = files_of(&std::fs::read(&built.archive).unwrap());
    let layout: Value = serde_json::from_slice(&files["oci-layout"]).unwrap();
    assert_eq!(layout, json!({"imageLayoutVersion": "1.0.0"}));

    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let descriptor = &manifests[0];
    assert_eq!(
        descriptor["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let reference = format!("ghcr.io/streamward/{name}:{VERSION}");
    assert_eq!(built.reference, reference);
    assert_eq!(
        descriptor["annotations"]["io.containerd.image.name"],
        reference
    );
    assert_eq!(
        descriptor["annotations"]["org.opencontainers.image.ref.name"],
        VERSION
    );
    assert_eq!(descriptor["digest"], built.manifest_digest.as_str());

    let manifest: Value = serde_json::from_slice(blob(&files, descriptor)).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config_bytes = blob(&files, &manifest["config"]);
    let config: Value = serde_json::from_slice(config_bytes).unwrap();
    let compressed = blob(&files, &layers[0]);
    let mut layer = Vec::new();
    GzDecoder::new(compressed).read_to_end(&mut layer).unwrap();
    let manifest_size = descriptor["size"].as_u64().unwrap();
    assert_eq!(
        built.compressed_bytes,
        manifest_size + config_bytes.len() as u64 + compressed.len() as u64
    );

    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["config"]["User"], "65532:65532", "runs as non-root");
    assert_eq!(
        config["config"]["Entrypoint"],
        json!([format!("/usr/local/bin/{name}")])
    );
    assert_eq!(config["config"]["Env"], json!(["PATH=/usr/local/bin"]));
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], name.as_str());
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert!(labels["org.opencontainers.image.source"].is_string());
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(config["rootfs"]["diff_ids"], json!([sha256(&layer)]));
    layer
}

/// Checks what the layer holds: the program, its libraries, four files of `/etc` and `/tmp`.
fn check_layer(name: &str, layer: &[u8]) {
    let binary = format!("usr/local/bin/{name}");
    let etc = [
        "etc/passwd",
        "etc/group",
        "etc/ssl/certs/ca-certificates.crt",
    ];
    let mut archive = tar::Archive::new(layer);
    let mut regular = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let header = entry.header();
        let path = entry.path().unwrap().display().to_string();
        let file_name = path.trim_end_matches('/').rsplit('/').next().unwrap();
        assert!(
            ![
                "sh", "bash", "dash", "ash", "busybox", "apt", "apt-get", "dpkg"
            ]
            .contains(&file_name),
            "{name}: {path} has no place in the image"
        );
        assert!(
            !["bin/", "sbin/", "usr/bin/", "usr/sbin/", "var/lib/dpkg"]
                .iter()
                .any(|p| path.starts_with(p)),
            "{name}: {path} has no place in the image"
        );
        assert_eq!(header.uid().unwrap(), 0, "{name}: {path} owned by root");
        assert_eq!(header.gid().unwrap(), 0, "{name}: {path} group root");
        let mode = header.mode().unwrap();
        match header.entry_type() {
            tar::EntryType::Directory if path == "tmp/" => {
                assert_eq!(mode, 0o1777, "{name}: /tmp is sticky and open to all");
            }
            tar::EntryType::Directory => {}
            tar::EntryType::Regular => regular.push(path.clone()),
            other => panic!("{name}: {path} is a {other:?}: only files and folders expected"),
        }
        assert!(
            path == "tmp/" || mode & 0o022 == 0,
            "{name}: {path} (mode {mode:o}) is writable by others than root"
        );
    }
    assert!(regular.contains(&binary), "{name}: no {binary}");
    for file in etc {
        assert!(regular.contains(&file.to_string()), "{name}: no {file}");
    }
    assert!(
        regular.contains(&"lib64/ld-linux-x86-64.so.2".to_string()),
        "{name}: no loader at the binary's interpreter path: {regular:?}"
    );
    assert!(
        regular.iter().any(|p| p.ends_with("/libc.so.6")),
        "{name}: no libc: {regular:?}"
    );
    for path in &regular {
        let library =
            (path.starts_with("lib/") || path.starts_with("lib64/")) && path.contains(".so");
        assert!(
            library || *path == binary || etc.contains(&path.as_str()),
            "{name}: {path} is neither the program, a shared library nor one of {etc:?}"
        );
    }
}

/// Unpacks the layer and runs `<entry point> --version` in a chroot of it as 65532:65532.
fn run_entry_point(name: &str, layer: &[u8]) {
    let root = tempfile::tempdir().unwrap();
    // A container's root folder is 0755; a temp folder is 0700, closed to the non-root user.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.unpack(root.path()).unwrap();
    assert!(
        !root.path().join("bin/sh").exists() && !root.path().join("usr/bin/sh").exists(),
        "{name}: a shell in the unpacked image"
    );
    let output = run(
        &format!("{name} --version in a chroot"),
        Command::new("chroot")
            .arg("--userspec=65532:65532")
            .arg(root.path())
            .args([&format!("/usr/local/bin/{name}"), "--version"]),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("{name} {VERSION}")
    );
}

#[test]
fn every_image_holds_only_its_program_and_runs_it_as_nonroot() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test chroots into the images and needs root"
    );
    let built = built();
    assert_eq!(
        built
            .images
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        PROGRAMS
    );
    let listing: Value =
        serde_json::from_slice(&std::fs::read(built.out.path().join(image::LISTING)).unwrap())
            .unwrap();
    assert_eq!(listing.as_array().map(Vec::len), Some(PROGRAMS.len()));
    for image in &built.images {
        let layer = check_layout(image);
        check_layer(&image.name, &layer);
        run_entry_point(&image.name, &layer);
    }
    let sidecar = &built.images[1];
    assert_eq!(sidecar.name, "streamward-sidecar");
    assert!(
        sidecar.compressed_bytes <= SIDECAR_MAX_COMPRESSED_BYTES,
        "the proxy image is {} bytes compressed, over the target of {SIDECAR_MAX_COMPRESSED_BYTES}",
        sidecar.compressed_bytes
    );
}

#[test]
fn identical_inputs_give_identical_archives_and_a_warm_run_rewrites_nothing() {
    let built = built();
    let sidecar = &built.images[1];
    let elsewhere = tempfile::tempdir().unwrap();
    let again = image::build("streamward-sidecar", &built.binaries, elsewhere.path()).unwrap();
    assert!(!again.reused);
    assert_eq!(again.manifest_digest, sidecar.manifest_digest);
    assert_eq!(
        std::fs::read(&again.archive).unwrap(),
        std::fs::read(&sidecar.archive).unwrap(),
        "two builds of the same inputs differ"
    );

    let modified = std::fs::metadata(&sidecar.archive)
        .unwrap()
        .modified()
        .unwrap();
    let warm = image::build_all(&built.binaries, built.out.path()).unwrap();
    for (warm, cold) in warm.iter().zip(&built.images) {
        assert!(warm.reused, "{} was rebuilt", warm.name);
        assert_eq!(warm.manifest_digest, cold.manifest_digest);
    }
    assert_eq!(
        std::fs::metadata(&sidecar.archive)
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );
}
