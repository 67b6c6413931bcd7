//! Debian repositories: verified access, package indexes, dependency resolution, lock files.

pub mod control;
pub mod index;
pub mod lock;
pub mod relation;
pub mod release;
pub mod repo;
pub mod resolve;
pub mod sources;
pub mod version;
