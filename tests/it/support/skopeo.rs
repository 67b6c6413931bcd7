//! Reading pushed images back with the real skopeo.

use std::path::Path;
use std::process::Command;

use hakim::digest::Sha256Digest;

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("skopeo missing (apt-get install skopeo): {e}"));
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Raw manifest bytes at `docker://REF`, and their digest.
pub fn raw(reference: &str, creds: Option<&str>) -> (Vec<u8>, Sha256Digest) {
    let r = format!("docker://{reference}");
    let mut args = vec!["inspect", "--tls-verify=false", "--raw"];
    if let Some(c) = creds {
        args.extend(["--creds", c]);
    }
    args.push(&r);
    let bytes = skopeo(&args);
    let d = Sha256Digest::of(&bytes);
    (bytes, d)
}

/// `skopeo inspect` JSON (config view) of `docker://REF` for `arch`.
pub fn inspect(reference: &str, arch: &str) -> serde_json::Value {
    let r = format!("docker://{reference}");
    serde_json::from_slice(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--override-arch",
        arch,
        &r,
    ]))
    .unwrap()
}

/// `skopeo copy --all docker://REF oci:DIR:tag`; returns the digest recorded in DIR/index.json.
pub fn copy_to_oci(reference: &str, dir: &Path) -> Sha256Digest {
    let src = format!("docker://{reference}");
    let dst = format!("oci:{}:copied", dir.display());
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "-q",
        &src,
        &dst,
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}
