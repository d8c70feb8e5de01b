//! Writes one YAML file per Streamward CRD into the folder given as the only argument
//! (`just crds` uses `crds/`), removing files of kinds that no longer exist.

use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).context("usage: crdgen <folder>")?);
    std::fs::create_dir_all(&out)?;
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::remove_file(&path)?;
        }
    }
    for crd in streamward_api::crds() {
        let name = crd.metadata.name.clone().context("a CRD without a name")?;
        let file = out.join(format!("{name}.yaml"));
        std::fs::write(&file, serde_yaml::to_string(&crd)?)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}
