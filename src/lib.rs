//! hakim: declarative builder, tester and publisher of Hakim workspace images.
//!
//! The pipeline, one module per stage: [`spec`] (variant YAML) → [`debian`] (resolve/lock)
//! → [`fetch`] (downloads into the [`cache`]) → [`layer`] (assemble and seal layers)
//! → [`oci`] (image layouts) → [`publish`] (registries) and [`export`] (files) → [`imagetest`]
//! (`hakim run`, `hakim test`); [`session`] owns the shared state and [`build`] drives the
//! steps. Imports point only that way. `ARCHITECTURE.md` maps every stage and seam.
//! [`net`] holds the retry policy and timeouts every HTTP client shares; [`rootfs`] mounts
//! and sandboxes root filesystems for layer builds and for the test stage.

pub mod build;
pub mod cache;
pub mod debian;
pub mod digest;
pub mod export;
pub mod fetch;
pub mod fsutil;
pub mod git;
pub mod imagetest;
pub mod janitor;
pub mod layer;
pub mod media;
pub mod net;
pub mod oci;
pub mod prune;
pub mod publish;
pub mod rootfs;
pub mod session;
pub mod spec;
