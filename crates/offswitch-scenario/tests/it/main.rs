//! Integration tests of offswitch-scenario.
