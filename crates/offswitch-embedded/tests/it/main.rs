//! Integration tests of offswitch-embedded.
