//! `hakim test`: run each variant's `tests:` inside its built image.

use anyhow::Result;
use clap::Args;
use hakim::imagetest::{Images, VariantTests};

use super::{Paths, exit::Status, pick_arch, print_json};

/// Arguments of `hakim test`.
#[derive(Args)]
pub struct TestArgs {
    /// Variants to test.
    pub variants: Vec<String>,
    /// Test every variant (the same as naming none).
    #[arg(long, conflicts_with = "variants")]
    pub all: bool,
    /// Architecture (default: this machine's, when the variant has it).
    #[arg(long)]
    pub arch: Option<String>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seconds before a test is killed.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// Test every selected variant; any failed test makes the status a failure.
pub fn run(paths: &Paths, args: TestArgs) -> Result<Status> {
    let project = paths.load()?;
    let images = Images::new(paths.layout(), &paths.cache);
    let timeout = std::time::Duration::from_secs(args.timeout);
    let mut results = Vec::new();
    for v in project.select(&args.variants)? {
        let arch = pick_arch(v, args.arch.clone());
        let r = images.test(v, &arch, timeout)?;
        if !args.json {
            render(&r);
        }
        results.push(r);
    }
    let passed = results.iter().all(|r| r.passed);
    if args.json {
        print_json(&serde_json::json!({ "passed": passed, "variants": results }))?;
    }
    Ok(if passed {
        Status::SUCCESS
    } else {
        Status::FAILURE
    })
}

/// Plain per-test lines; a failing test's reasons and output tail go to stderr.
fn render(r: &VariantTests) {
    println!("{} ({}, {})", r.variant, r.reference, r.arch);
    for t in &r.tests {
        let mark = if t.passed { "ok  " } else { "FAIL" };
        println!("  {mark} {} ({:.2}s)", t.name, t.seconds);
        if t.passed {
            continue;
        }
        for f in &t.failures {
            println!("       {f}");
        }
        for (label, text) in [("stdout", &t.stdout), ("stderr", &t.stderr)] {
            let lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                eprintln!("       --- {label} (last lines) ---");
                for l in &lines[lines.len().saturating_sub(20)..] {
                    eprintln!("       {l}");
                }
            }
        }
    }
    let failed = r.tests.iter().filter(|t| !t.passed).count();
    println!("  {} passed, {failed} failed", r.tests.len() - failed);
}
