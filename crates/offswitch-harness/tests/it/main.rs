//! Integration tests of offswitch-harness: one binary, one module per feature.

mod final_files;
mod limits;
mod mock_backend;
mod monitors;
mod resume;
mod runner;
mod scenarios;
mod scripted;
mod support;
mod trials;
