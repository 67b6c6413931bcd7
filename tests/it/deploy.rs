//! The Coder templates under deploy/coder/ have the structure the no-SSH design needs, checked
//! by parsing them with python-hcl2 (pinned; scripts/test installs it into a private venv).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{copy_dir, repo_root};

/// The pinned python-hcl2 version (the same as in scripts/test).
const HCL2_VERSION: &str = "8.1.4";

/// The venv python that has python-hcl2; fails loudly, naming the fix, when it is missing.
fn hcl2_python() -> PathBuf {
    let python = std::env::var_os("HAKIM_TEST_HCL2_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/hakim-test/hcl2-venv/bin/python")
        });
    let version = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('python-hcl2'))",
        ])
        .output();
    let found = match &version {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => String::new(),
    };
    assert_eq!(
        found,
        HCL2_VERSION,
        "missing test prerequisite: python-hcl2=={HCL2_VERSION} in a venv at {} \
         (scripts/test creates it: apt-get install python3-venv, then \
         `python3 -m venv DIR && DIR/bin/pip install python-hcl2=={HCL2_VERSION}`; \
         or set HAKIM_TEST_HCL2_PYTHON)",
        python.display()
    );
    python
}

fn check(kind: &str, dir: &Path) -> Output {
    Command::new(hcl2_python())
        .arg(repo_root().join("tests/check_templates.py"))
        .arg(kind)
        .arg(dir)
        .output()
        .unwrap()
}

fn passed(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("ok ").map(str::to_string))
        .collect()
}

/// The checker passes on the shipped template and runs exactly `checks`.
fn assert_passes(kind: &str, checks: &[&str]) {
    let out = check(kind, &repo_root().join("deploy/coder").join(kind));
    assert!(
        out.status.success(),
        "{kind}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(passed(&out), checks, "{kind}");
}

#[test]
fn proxmox_template_has_the_no_ssh_structure() {
    assert_passes(
        "proxmox",
        &[
            "token",
            "persistent",
            "home",
            "template",
            "lifecycle",
            "network",
            "agent-extras",
            "no-remote-execution",
        ],
    );
}

#[test]
fn docker_template_has_the_no_ssh_structure() {
    assert_passes(
        "docker",
        &[
            "token",
            "persistent",
            "entrypoint",
            "home",
            "host-gateway",
            "agent-extras",
            "no-remote-execution",
        ],
    );
}

/// Each mutation (old text → new text in main.tf) must make the check fail with `why`.
fn assert_rejected(kind: &str, mutations: &[(&str, &str, &str)]) {
    for (from, to, why) in mutations {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&repo_root().join("deploy/coder").join(kind), dir.path());
        let tf = dir.path().join("main.tf");
        let text = fs::read_to_string(&tf).unwrap();
        assert!(text.contains(from), "{kind}/main.tf no longer has {from:?}");
        fs::write(&tf, text.replacen(from, to, 1)).unwrap();
        let out = check(kind, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "{kind}: replacing {from:?} with {to:?} should fail with {why:?}; got {stderr}"
        );
    }
}

#[test]
fn structure_check_rejects_ssh_bootstraps_and_broken_wiring() {
    assert_rejected(
        "proxmox",
        &[
            (
                "CODER_AGENT_TOKEN = coder_agent.main.token",
                "CODER_AGENT_TOKEN = var.proxmox_api_token",
                "FAIL token",
            ),
            (
                "started = data.coder_workspace.me.start_count == 1",
                "started = true",
                "FAIL persistent",
            ),
            (
                "path   = \"/home/coder\"",
                "path   = \"/srv/home\"",
                "FAIL home",
            ),
            (
                "? proxmox_oci_image.hakim[0].id",
                "? \"local:vztmpl/x.tar\"",
                "FAIL template",
            ),
            (
                "operating_system[0].template_file_id,",
                "",
                "FAIL lifecycle",
            ),
            (
                "host_managed = true",
                "host_managed = false",
                "FAIL network",
            ),
            (
                "  lifecycle {\n    # template_file_id",
                "  provisioner \"remote-exec\" {\n    inline = [\"true\"]\n  }\n  lifecycle {\n    # template_file_id",
                "FAIL no-remote-execution",
            ),
        ],
    );
    assert_rejected(
        "docker",
        &[
            (
                "count    = data.coder_workspace.me.start_count",
                "count    = 1",
                "FAIL persistent",
            ),
            (
                "  # No entrypoint or command override",
                "  entrypoint = [\"sh\", \"-c\", coder_agent.main.init_script]\n  #",
                "FAIL entrypoint",
            ),
            (
                "name = \"coder-${data.coder_workspace.me.id}-home\"",
                "name = \"coder-home\"",
                "FAIL home",
            ),
            (
                "resource \"docker_image\" \"hakim\" {",
                "resource \"null_resource\" \"boot\" {\n  provisioner \"local-exec\" {\n    command = \"true\"\n  }\n}\n\nresource \"docker_image\" \"hakim\" {",
                "FAIL no-remote-execution",
            ),
        ],
    );
}
