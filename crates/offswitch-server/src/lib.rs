//! offswitch-server (being written).
