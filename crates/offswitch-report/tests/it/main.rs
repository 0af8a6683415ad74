//! Integration tests of offswitch-report.
