//! The images the node runs, built here (no registry is reachable, nothing is pulled) and kept
//! in the cache as OCI archives that `ctr images import` loads:
//!
//! - the sandbox (`pause`) image: the static Go `pause` of `e2e/k8s/pause`;
//! - CoreDNS: its static binary;
//! - the clients image: a Debian bookworm root filesystem from `mmdebstrap` with `kcat`,
//!   `python3` and the confluent-kafka wheel (the same release as the host's client), for
//!   Kafka clients in pods.
//!
//! Each image is one uncompressed layer: the archives never leave the machine, and containerd
//! unpacks an uncompressed layer faster than a gzip one. The layout is written here (four small
//! JSON documents) rather than with umoci or skopeo, which would be two more tools to install.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cache;
use crate::clients::{self, CONFLUENT_KAFKA_VERSION};
use crate::process::run;

use super::install::{COREDNS_VERSION, NodeBinaries};

/// Where the harness's own test images are named to come from: a `.test` name (reserved, never
/// resolvable), so that an image missing from the node fails to pull at once instead of being
/// fetched from somewhere.
pub const TEST_REGISTRY: &str = "streamward.test/e2e";

/// The sandbox image containerd starts every pod with.
pub const PAUSE_IMAGE: &str = "streamward.test/e2e/pause:1";

/// The CoreDNS image.
pub fn coredns_image() -> String {
    format!(
        "{TEST_REGISTRY}/coredns:{}",
        COREDNS_VERSION.trim_start_matches('v')
    )
}

/// The Debian image with `kcat`, `python3` and confluent-kafka.
pub fn clients_image() -> String {
    format!("{TEST_REGISTRY}/kafka-clients:bookworm-ck{CONFLUENT_KAFKA_VERSION}")
}

/// An image archive ready for `ctr images import`.
#[derive(Clone, Debug)]
pub struct ImageArchive {
    /// The name the image is imported under (as the CRI normalises names).
    pub reference: String,
    /// The OCI layout, in a tar.
    pub archive: PathBuf,
}

/// Builds (once per version) the sandbox, CoreDNS and clients images.
pub fn build_all(binaries: &NodeBinaries) -> Result<Vec<ImageArchive>> {
    Ok(vec![pause(binaries)?, coredns(binaries)?, kafka_clients()?])
}

fn pause(binaries: &NodeBinaries) -> Result<ImageArchive> {
    let reference = PAUSE_IMAGE.to_string();
    let dir = cache::ensure("node-image-pause-1", |dir| {
        single_binary_image(&binaries.kubernetes("pause"), "pause", &reference, dir)
    })?;
    Ok(ImageArchive {
        reference,
        archive: dir.join("image.oci.tar"),
    })
}

fn coredns(binaries: &NodeBinaries) -> Result<ImageArchive> {
    let reference = coredns_image();
    let dir = cache::ensure(&format!("node-image-coredns-{COREDNS_VERSION}"), |dir| {
        single_binary_image(&binaries.coredns(), "coredns", &reference, dir)
    })?;
    Ok(ImageArchive {
        reference,
        archive: dir.join("image.oci.tar"),
    })
}

/// An image with only `/<name>` (a static binary) as its entry point.
fn single_binary_image(binary: &Path, name: &str, reference: &str, dir: &Path) -> Result<()> {
    let root = dir.join("rootfs");
    fs::create_dir_all(&root)?;
    fs::copy(binary, root.join(name))
        .with_context(|| format!("copying {} into the image", binary.display()))?;
    let layer = dir.join("layer.tar");
    run(
        "tar (image layer)",
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
    )?;
    write_archive(
        &layer,
        reference,
        &json!({ "Entrypoint": [format!("/{name}")] }),
        &dir.join("image.oci.tar"),
    )?;
    fs::remove_dir_all(&root)?;
    fs::remove_file(&layer)?;
    Ok(())
}

fn kafka_clients() -> Result<ImageArchive> {
    let reference = clients_image();
    let python = clients::python()?;
    let dir = cache::ensure(
        &format!("node-image-kafka-clients-bookworm-ck{CONFLUENT_KAFKA_VERSION}"),
        |dir| {
            let layer = dir.join("rootfs.tar");
            // The wheel is installed by the host's Python (bookworm's 3.11 too, so the same ABI)
            // straight into the image's dist-packages.
            let pip = format!(
                "{} -m pip install -q --disable-pip-version-check --no-compile \
                 --target \"$1/usr/lib/python3/dist-packages\" confluent-kafka=={CONFLUENT_KAFKA_VERSION}",
                python.display()
            );
            run(
                "mmdebstrap (kafka-clients image)",
                Command::new("mmdebstrap")
                    .args([
                        "--quiet",
                        "--variant=essential",
                        "--include=kcat,ca-certificates,python3",
                    ])
                    .arg(format!("--customize-hook={pip}"))
                    .arg("bookworm")
                    .arg(&layer),
            )?;
            write_archive(
                &layer,
                &reference,
                &json!({
                    "Cmd": ["/bin/sh"],
                    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                }),
                &dir.join("image.oci.tar"),
            )?;
            fs::remove_file(&layer)?;
            Ok(())
        },
    )?;
    Ok(ImageArchive {
        reference,
        archive: dir.join("image.oci.tar"),
    })
}

/// Writes an OCI image layout with the one uncompressed `layer` and the process settings
/// `config` (the image config's `config` object), packed into the tar `out`, and named
/// `reference` for containerd's importer.
pub fn write_archive(
    layer: &Path,
    reference: &str,
    config: &serde_json::Value,
    out: &Path,
) -> Result<()> {
    let layout = out.with_extension("layout");
    if layout.exists() {
        fs::remove_dir_all(&layout)?;
    }
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let (layer_digest, layer_size) = sha256_file(layer)?;
    // A hard link, not a copy: the layer can be hundreds of megabytes.
    fs::hard_link(layer, blobs.join(&layer_digest))
        .or_else(|_| fs::copy(layer, blobs.join(&layer_digest)).map(drop))
        .with_context(|| format!("putting {} into the layout", layer.display()))?;

    let put = |value: serde_json::Value| -> Result<(String, usize)> {
        let bytes = serde_json::to_vec(&value)?;
        let digest = hex::encode(Sha256::digest(&bytes));
        fs::write(blobs.join(&digest), &bytes)?;
        Ok((digest, bytes.len()))
    };
    let (config_digest, config_size) = put(json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
    }))?;
    let (manifest_digest, manifest_size) = put(json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_size,
        }],
    }))?;
    let tag = reference
        .rsplit_once(':')
        .map(|(_, tag)| tag)
        .context("image references here carry a tag")?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_size,
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    run(
        "tar (OCI layout)",
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(out)
            .args(["oci-layout", "index.json", "blobs"]),
    )?;
    fs::remove_dir_all(&layout)?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    if size == 0 {
        bail!("{} is empty", path.display());
    }
    Ok((hex::encode(hasher.finalize()), size))
}
