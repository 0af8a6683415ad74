//! offswitch-harness (being written).
