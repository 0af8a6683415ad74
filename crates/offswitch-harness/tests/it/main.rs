//! Integration tests of offswitch-harness: one binary, one module per feature.

mod scripted;
mod support;
mod trials;
