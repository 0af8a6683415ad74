//! Integration tests of offswitch-sandbox: real namespaces, real cgroups, real processes.
//! Everything runs as root here and in CI; tests that need root say so when they skip.

mod support;

mod basics;
mod binds;
mod escapes;
mod events;
mod guarding;
mod kill;
mod limits;
mod link;
mod snapshot;
mod unprivileged;
