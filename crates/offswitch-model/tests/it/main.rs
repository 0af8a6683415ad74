//! Integration tests of offswitch-model.
