//! End-to-end tests of the `offswitch` binary: one test binary, one module per feature.

mod pipes;
mod run;
mod scenarios;
