//! offswitch-report (being written).
