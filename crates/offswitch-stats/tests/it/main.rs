//! Integration tests of offswitch-stats.
