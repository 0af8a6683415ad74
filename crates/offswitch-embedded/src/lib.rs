//! offswitch-embedded (being written).
