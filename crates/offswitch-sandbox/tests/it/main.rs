//! Integration tests of offswitch-sandbox: real namespaces, real cgroups, real processes.

mod support;

mod basics;
