//! Integration tests of offswitch-harness.
