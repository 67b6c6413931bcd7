//! Helpers shared by the integration tests: running hakim, prerequisites, fixtures, servers.

pub mod entrypoint_harness;
pub mod fake_coder;
pub mod image;
pub mod layout;
pub mod mirror_proxy;
pub mod proxy;
pub mod pve;
pub mod registry;
pub mod run_cache;
pub mod skopeo;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// Fail loudly (never skip) when a test prerequisite is missing.
pub fn require_bin(bin: &str, apt_package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "missing test prerequisite `{bin}`: install it with `apt-get install {apt_package}` (scripts/test does this)"
    );
}

/// Fail loudly unless running as root.
pub fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test needs root (CI runs as root)"
    );
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copy a directory tree (files, dirs, symlinks).
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_dir(&e.path(), &to);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A scratch copy of `tests/fixtures/<name>` plus private cache and output dirs.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    /// Copy a fixture project.
    pub fn fixture(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &repo_root().join("tests/fixtures").join(name),
            &dir.path().join("project"),
        );
        Self { dir }
    }

    /// The project directory.
    pub fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// The cache directory.
    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The output directory.
    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// The OCI layout.
    pub fn layout(&self) -> PathBuf {
        self.out().join("oci")
    }

    /// `hakim` with this scratch's project, cache and output.
    pub fn hakim(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hakim"));
        c.arg("--project")
            .arg(self.project())
            .arg("--cache-dir")
            .arg(self.cache())
            .arg("--out")
            .arg(self.out());
        c.env_remove("SOURCE_DATE_EPOCH");
        c
    }

    /// Write a file in the project.
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.project().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// Read a file of the project.
    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.project().join(rel)).unwrap()
    }
}

/// Run a command and return its output, panicking with stderr if it failed.
pub fn run_ok(c: &mut Command) -> Output {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a command that must fail; return its stderr.
pub fn run_err(c: &mut Command) -> String {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(
        !out.status.success(),
        "{c:?} should have failed; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout as JSON.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// A tiny HTTP file server on 127.0.0.1 that records request paths.
pub struct FileServer {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
    server: Arc<tiny_http::Server>,
}

impl FileServer {
    /// Serve `files` (URL path → bytes); unknown paths get 404.
    pub fn start(files: Vec<(String, Vec<u8>)>) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (server.clone(), requests.clone());
        std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let path = req.url().to_string();
                r.lock().unwrap().push(path.clone());
                let resp = match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => tiny_http::Response::from_data(body.clone()),
                    None => {
                        tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404)
                    }
                };
                let _ = req.respond(resp);
            }
        });
        Self {
            port,
            requests,
            server,
        }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// Validate every JSON document of a layout against the OCI schemas (python3-jsonschema).
pub fn validate_layout(layout: &Path) {
    require_bin("python3", "python3");
    let out = run_ok(
        Command::new("/usr/bin/python3")
            .arg(repo_root().join("tests/validate_oci.py"))
            .arg(repo_root().join("tests/oci-schemas"))
            .arg(layout),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok index.json"));
}

/// Unpack `layout:ref` with umoci into `dest` (a bundle; the tree is `dest/rootfs`).
pub fn umoci_unpack(layout: &Path, reference: &str, dest: &Path) -> PathBuf {
    require_bin("umoci", "umoci");
    let _ = fs::remove_dir_all(dest);
    run_ok(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{reference}", layout.display()))
            .arg(dest),
    );
    dest.join("rootfs")
}

/// `skopeo inspect` (or `--raw`) of an OCI layout ref, as JSON.
pub fn skopeo_inspect(layout: &Path, reference: &str, extra: &[&str]) -> serde_json::Value {
    require_bin("skopeo", "skopeo");
    let out = run_ok(
        Command::new("skopeo")
            .arg("inspect")
            .args(extra)
            .arg(format!("oci:{}:{reference}", layout.display())),
    );
    json(&out)
}
