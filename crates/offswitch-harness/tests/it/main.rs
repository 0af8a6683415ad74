//! Integration tests of offswitch-harness: one binary, one module per feature.

mod limits;
mod mock_backend;
mod runner;
mod scripted;
mod support;
mod trials;
