//! Integration tests of the store, `hunt` and the timeline, in one binary (one link on a small machine).

mod cases;
mod common;
mod devices;
mod queries;
mod store;
mod timeline;
