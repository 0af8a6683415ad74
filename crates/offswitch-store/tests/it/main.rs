//! Integration tests of offswitch-store.
