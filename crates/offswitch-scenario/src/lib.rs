//! offswitch-scenario (being written).
