//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod layout;
pub mod proxy;
pub mod registry;
pub mod skopeo;
