//! offswitch-stats (being written).
