//! Containing a real agent: `offswitch guard` runs any agent program in an offswitch sandbox
//! under a policy, and watches the kernel's event stream of that sandbox as it happens.
//!
//! - `policy`: the TOML policy (protected paths, rules, breakers, network, heartbeat),
//!   validated with located errors.
//! - `monitor`: the live monitors and circuit breakers, a pure state machine over events.
//! - `content`: recognising a protected file's content, whole or in parts, anywhere.
//! - `session`: one guarded run: the sandbox, the agent command with its input and output
//!   passed through, the monitors' actions (record, alert, pause, kill), the dead-man's
//!   switch, the audit log, and the end (everything left running killed and counted).
//! - `net`: the network a policy allows: loopback forwards and an HTTP CONNECT proxy that
//!   lets through only allowed destinations (nothing else is routed out of the sandbox).
//! - `control`: the control plane, a Unix socket per session that only the operator can
//!   reach and nothing inside can see (`list`, `status`, `pause`, `resume`, `stop`,
//!   `heartbeat`).

pub mod audit;
pub mod content;
pub mod control;
pub mod monitor;
pub mod net;
pub mod policy;
pub mod session;

pub use policy::{Action, Policy, PolicyError};
pub use session::{AuditSink, GuardError, GuardOptions, SessionEnd, run};

/// The guard's exit code when it stopped the agent itself (a rule, a breaker, the deadline,
/// the dead-man's switch, a sandbox limit or an operator's `stop`).
pub const EXIT_STOPPED: i32 = 125;
