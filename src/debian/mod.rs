//! The resolve stage: verified Debian repository access, package indexes, dependency resolution,
//! lock files, and [`packages`], which turns a variant's package layers into locked, fetched .debs.

pub mod control;
pub mod index;
pub mod lock;
pub mod packages;
pub mod relation;
pub mod release;
pub mod repo;
pub mod resolve;
pub mod sources;
pub mod version;
