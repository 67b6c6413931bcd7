//! `hakim test`: a variant's `tests:` run in its built image, each in a fresh overlay.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::mount::MountedImage;
use crate::oci::ResolvedImage;
use crate::rootfs::sandbox::exit_code;
use crate::rootfs::{Backend, RootfsCache, RootfsError};
use crate::spec::TestSpec;

/// How much of a test's stdout/stderr a report keeps (the end of it).
pub const OUTPUT_TAIL: usize = 4096;

/// The result of one test.
#[derive(Clone, Debug, Serialize)]
pub struct TestOutcome {
    /// The test's name.
    pub name: String,
    /// Whether every expectation held.
    pub passed: bool,
    /// Exit code (128 + signal when killed; absent when it never ran or timed out).
    pub exit_code: Option<i32>,
    /// The expected exit code.
    pub expected_exit_code: i32,
    /// What went wrong, one sentence each.
    pub failures: Vec<String>,
    /// The end of stdout.
    pub stdout: String,
    /// The end of stderr.
    pub stderr: String,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The results of one variant's tests.
#[derive(Clone, Debug, Serialize)]
pub struct VariantTests {
    /// Variant key.
    pub variant: String,
    /// The image ref tested.
    pub reference: String,
    /// Architecture tested.
    pub arch: String,
    /// Whether all tests passed.
    pub passed: bool,
    /// Per test, in order.
    pub tests: Vec<TestOutcome>,
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Run every test of a variant against its resolved image.
pub fn test_variant(
    variant: &str,
    arch: &str,
    image: &ResolvedImage,
    tests: &[TestSpec],
    cache: &RootfsCache,
    timeout: Duration,
) -> Result<VariantTests, RootfsError> {
    Backend::Container.require()?;
    let mut out = Vec::new();
    for t in tests {
        // A fresh upper per test, so one test's writes cannot change another's result.
        let mounted = MountedImage::mount(image, cache)?;
        out.push(run_test(&mounted, t, timeout)?);
    }
    Ok(VariantTests {
        variant: variant.to_string(),
        reference: image.reference.clone(),
        arch: arch.to_string(),
        passed: out.iter().all(|t| t.passed),
        tests: out,
    })
}

/// Run one test (`/bin/sh -c RUN`) and check its exit code and stdout.
pub fn run_test(
    image: &MountedImage,
    test: &TestSpec,
    timeout: Duration,
) -> Result<TestOutcome, RootfsError> {
    let started = Instant::now();
    let mut outcome = TestOutcome {
        name: test.name.clone(),
        passed: false,
        exit_code: None,
        expected_exit_code: test.exit_code,
        failures: Vec::new(),
        stdout: String::new(),
        stderr: String::new(),
        seconds: 0.0,
    };
    // Multi-line, as grep users expect: `^` and `$` match at every line.
    let pattern = match test
        .stdout
        .as_deref()
        .map(|p| regex::RegexBuilder::new(p).multi_line(true).build())
        .transpose()
    {
        Ok(p) => p,
        Err(e) => {
            outcome.failures.push(format!("bad stdout regex: {e}"));
            return Ok(outcome);
        }
    };
    let sb = match image.sandbox(test.user.as_deref()) {
        Ok(sb) => sb,
        Err(e @ RootfsError::User { .. }) => {
            outcome.failures.push(e.to_string());
            return Ok(outcome);
        }
        Err(e) => return Err(e),
    };
    let mut cmd = sb.command(&["/bin/sh".into(), "-c".into(), test.run.clone()])?;
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| RootfsError::Spawn {
        what: format!("test `{}`", test.name),
        source,
    })?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err_t = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|source| RootfsError::Spawn {
            what: format!("test `{}`", test.name),
            source,
        })? {
            break Some(s);
        }
        if started.elapsed() > timeout {
            // The whole process group: unshare --kill-child only reaches the sandbox's init, and a
            // test that switched user no longer dies with its parent.
            // SAFETY: kill(2) on the group this child leads.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    outcome.stdout = tail(&stdout);
    outcome.stderr = tail(&stderr);
    outcome.seconds = started.elapsed().as_secs_f64();
    match status {
        None => outcome
            .failures
            .push(format!("timed out after {}s", timeout.as_secs())),
        Some(s) => {
            let code = exit_code(s);
            outcome.exit_code = Some(code);
            if code != test.exit_code {
                outcome
                    .failures
                    .push(format!("exit code {code}, expected {}", test.exit_code));
            }
        }
    }
    if let Some(re) = pattern
        && !re.is_match(&String::from_utf8_lossy(&stdout))
    {
        outcome
            .failures
            .push(format!("stdout does not match /{}/", re.as_str()));
    }
    outcome.passed = outcome.failures.is_empty();
    Ok(outcome)
}
