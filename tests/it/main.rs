//! hakim's integration tests, as one test binary so the support code compiles once.
//!
//! Tests that need root, the Debian mirror or an external tool fail loudly when it is missing;
//! `scripts/test` installs everything they use.

mod support;

mod build;
mod cli_paths;
mod debian;
mod debian_repo;
mod deploy;
mod entrypoint;
mod entrypoint_image;
mod entrypoint_input;
mod export;
mod fuzz;
mod hostile;
mod interrupt;
mod killed_write;
mod layouts;
mod parity;
mod publish_ci;
mod push;
mod push_cli;
mod push_netns;
mod pve;
mod registry_cache;
mod rootfs;
mod run;
mod variants;
mod workflows;
