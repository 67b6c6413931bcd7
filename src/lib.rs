//! hakim: declarative builder, tester and publisher of Hakim workspace images.
//!
//! The pipeline, one module per stage: [`spec`] (variant YAML) → [`debian`] (resolve/lock)
//! → [`fetch`] (downloads into the [`cache`]) → [`layer`] (assemble and seal layers)
//! → [`oci`] (image layouts) → [`publish`] (registries and exports); [`session`] owns the shared
//! state and [`build`] drives the steps. `ARCHITECTURE.md` maps every stage and seam.

pub mod build;
pub mod cache;
pub mod debian;
pub mod digest;
pub mod fetch;
pub mod fsutil;
pub mod git;
pub mod layer;
pub mod media;
pub mod oci;
pub mod packages;
pub mod publish;
pub mod rootfs;
pub mod session;
pub mod spec;
