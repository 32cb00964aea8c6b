//! Integration tests of the store, `hunt` and the timeline, in one binary (one link on a small machine).

#![expect(unused_crate_dependencies, reason = "a test target sees every dev-dependency of the package")]

mod cases;
mod common;
mod devices;
mod queries;
mod store;
mod timeline;
