//! Integration tests of offswitch-sandbox.
