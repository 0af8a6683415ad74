//! End-to-end tests of the `offswitch` binary: one test binary, one module per feature.

mod audit;
mod browser;
mod deploy;
mod export;
mod guard;
mod install;
mod keys;
mod pipes;
mod proxy;
mod run;
mod runs;
mod sandbox_cmd;
mod scenarios;
mod shard;
mod third_party;
mod view;
