//! offswitch-store (being written).
