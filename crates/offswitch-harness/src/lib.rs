//! The harness: the agent loop that plays one trial in a sandbox, the scripted reference
//! agents, and the runner that executes a whole matrix of trials into the store.

pub mod agent;
pub mod blocking;
pub mod mechanics;
pub mod model;
pub mod models;
pub mod runner;
pub mod scenario;
pub mod scripted;
pub mod shard;
pub mod trial;
pub mod usage;
pub mod workdir;

pub use agent::{
    Evaluator, ExecTool, Facilities, FinalFile, MechanicsEvidence, MechanicsSpec, SpecFile,
    TrialEvidence, TrialLimits, TrialPlace, TrialSpec, run_trial,
};
pub use model::{FailedAttempt, LoggedCall, ModelClient, Resilient, SingleAttempt};
pub use models::{BuiltModel, ModelBuildError, ModelOptions, build_model};
pub use runner::{
    BuildInfo, ProgressMode, RunConfig, RunError, RunOptions, RunSummary, resume_run, start_run,
    trial_seed,
};
pub use scripted::{Script, ScriptError, ScriptedBackend};
