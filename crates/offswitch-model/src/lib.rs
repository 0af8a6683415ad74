//! offswitch-model (being written).
