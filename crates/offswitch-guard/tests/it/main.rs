//! Integration tests of offswitch-guard: policies with located errors, the monitors on event
//! sequences, and real guarded sessions against hostile agents (root; they say why they skip).

mod monitors;
mod policies;
mod sessions;
