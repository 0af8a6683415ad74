//! Other hosts: a sandbox per `[[hosts]]` entry, linked to the agent's sandbox over a real
//! veth link, with its own home that the harness snapshots at the end.
//!
//! A host is a machine the agent can reach only over the network (10.77.0.0/24, the agent at
//! [`AGENT_ADDRESS`]); its home lives next to the agent's on the host filesystem
//! (`<agent home>.<host name>`) and is diffed against its starting snapshot exactly like the
//! agent's, so "the weights landed on the successor" is a fact about that directory, not about
//! anything the agent said. Every host sandbox is killed on every path: by [`Hosts::finish`],
//! or by the drop of [`Hosts`] when setup fails halfway or the trial is cancelled.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use offswitch_core::trial::TranscriptEntry;
use offswitch_sandbox::{
    EventStream, ExecRequest, ExecResult, ExecStatus, Limits, NetworkMode, Sandbox, SandboxConfig,
    SandboxError, Snapshot,
};
use offswitch_scenario::{Fact, FinalFile, HostEvidence, RenderedHost};

use crate::trial::{
    EVIDENCE_INCOMPLETE, SANDBOX_HOME, TrialPlace, TrialSpec, collect_final_files, sandbox_path,
    write_home_file,
};

/// The agent's own address on every link to another host.
pub const AGENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// The fact every trial with hosts reports: whether all of them were linked and answering.
pub const HOST_LINK_UP: &str = "host_link_up";

/// How long the start commands of one host get to open the ports they listen on.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Lists the host's TCP sockets and counts its processes other than init and the probe's own
/// shell (bash builtins only, so the count includes no helper).
const LISTENING_PROBE: &str = "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; others=0; \
     for d in /proc/[0-9]*; do p=${d#/proc/}; [ \"$p\" = 1 ] || [ \"$p\" = $$ ] || others=$((others+1)); done; \
     echo \"offswitch-others $others\"";
/// Pause between two looks at a host's listening sockets.
const READY_POLL: Duration = Duration::from_millis(50);
/// Time allowed to one harness command inside a host or the agent's sandbox.
const HARNESS_EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a failed start command's log quoted in the error.
const LOG_QUOTE_BYTES: usize = 1500;

/// The running hosts of one trial. Dropping it kills every host sandbox still running.
#[derive(Default)]
pub(crate) struct Hosts {
    machines: Vec<HostMachine>,
}

struct HostMachine {
    name: String,
    sandbox: Arc<Sandbox>,
    before: Snapshot,
    /// What its snapshots record first (see `MechanicsSpec::host_snapshot_priority`).
    priority: Vec<String>,
    /// The agent's starting files to look for on it at the end (see
    /// `MechanicsSpec::received_targets`).
    received_targets: Vec<(String, Vec<u8>)>,
}

impl Hosts {
    /// Create, link and start every declared host. Sets fact `host_link_up`. On failure the
    /// hosts created so far come back with the error so they can be torn down and reported.
    pub(crate) async fn setup(
        spec: &TrialSpec,
        agent: &Arc<Sandbox>,
        place: &TrialPlace,
        facts: &mut BTreeMap<String, Fact>,
        transcript: &mut Vec<TranscriptEntry>,
    ) -> Result<Hosts, (Hosts, String)> {
        let mut hosts = Hosts::default();
        if spec.mechanics.hosts.is_empty() {
            return Ok(hosts);
        }
        let mut up = Vec::new();
        for host in &spec.mechanics.hosts {
            match start_host(spec, agent, place, host, &mut hosts).await {
                Ok(detail) => {
                    transcript.push(TranscriptEntry::Event {
                        kind: "host_started".into(),
                        detail: detail.clone(),
                    });
                    up.push(detail);
                }
                Err(message) => {
                    let message = format!(
                        "scenario {} could not start its host {:?} ({}): {message}",
                        spec.key.scenario, host.name, host.address
                    );
                    facts.insert(
                        HOST_LINK_UP.into(),
                        Fact {
                            value: false,
                            detail: message.clone(),
                        },
                    );
                    return Err((hosts, message));
                }
            }
        }
        facts.insert(
            HOST_LINK_UP.into(),
            Fact {
                value: true,
                detail: up.join("; "),
            },
        );
        Ok(hosts)
    }

    /// Kill the hosts, snapshot their homes and diff them against the start. A host whose
    /// home cannot be read is left out, and the failure is logged. A host whose final snapshot
    /// stopped early gets an `evidence_incomplete` event: its labels rest on partial evidence.
    pub(crate) async fn finish(
        mut self,
        transcript: &mut Vec<TranscriptEntry>,
    ) -> (BTreeMap<String, HostEvidence>, Vec<EventStream>) {
        let mut evidence = BTreeMap::new();
        let mut streams = Vec::new();
        // One at a time out of `self`, so that if this future is dropped half way, the drop
        // of `self` still kills the hosts not yet reached.
        while !self.machines.is_empty() {
            let machine = self.machines.remove(0);
            let name = machine.name.clone();
            let gathered = crate::blocking::spawn(move || machine.finish()).await;
            match gathered {
                Ok((Ok(found), stream)) => {
                    if let Some(why) = &found.incomplete {
                        transcript.push(TranscriptEntry::Event {
                            kind: EVIDENCE_INCOMPLETE.into(),
                            detail: format!("{name}: {why}"),
                        });
                    }
                    evidence.insert(name, found);
                    streams.push(stream);
                }
                Ok((Err(error), stream)) => {
                    tracing::error!("host {name}: {error}");
                    streams.push(stream);
                }
                Err(join) => tracing::error!("host {name}: final snapshot task failed: {join}"),
            }
        }
        (evidence, streams)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for machine in self.machines.drain(..) {
            kill_logged(&machine.name, &machine.sandbox);
        }
    }
}

impl HostMachine {
    /// The host's evidence (saying why its final snapshot stopped early if it did) and its
    /// event stream. Kills first, so the home is read only once nothing on the host can
    /// change it.
    fn finish(self) -> (Result<HostEvidence, String>, EventStream) {
        kill_logged(&self.name, &self.sandbox);
        let stream = self.sandbox.event_stream();
        (self.gather(), stream)
    }

    fn gather(&self) -> Result<HostEvidence, String> {
        let home = self.sandbox.home().to_path_buf();
        let after = Snapshot::take_prioritized(&home, &self.priority)
            .map_err(|e| format!("failed to snapshot {} after the trial: {e}", home.display()))?;
        if let Some(why) = &after.incomplete {
            tracing::warn!("host {}: final snapshot incomplete: {why}", self.name);
        }
        let file_changes = self.before.diff(&after);
        // The detectors see regular files only, as for the agent's home; links and
        // directories show up in the file changes.
        let final_files = collect_final_files(&home, &after)
            .into_iter()
            .filter_map(|(path, file)| {
                let sha256 = file.sha256?;
                Some((
                    path,
                    FinalFile {
                        mode: file.mode,
                        sha256,
                        text: file.text,
                    },
                ))
            })
            .collect();
        let received = self
            .received_targets
            .iter()
            .map(|(from, target)| (from.clone(), super::received::find(target, &home, &after)))
            .collect();
        Ok(HostEvidence {
            file_changes,
            final_files,
            received,
            incomplete: after.incomplete,
        })
    }
}

fn kill_logged(name: &str, sandbox: &Sandbox) {
    if let Err(error) = sandbox.kill() {
        tracing::error!(
            "failed to kill host {name} at {}: {error}",
            sandbox.home().display()
        );
    }
}

/// Create one host, register it in `hosts` (so it is killed whatever happens next), link it,
/// run its start commands and wait for their ports. Returns what was started, in words.
async fn start_host(
    spec: &TrialSpec,
    agent: &Arc<Sandbox>,
    place: &TrialPlace,
    host: &RenderedHost,
    hosts: &mut Hosts,
) -> Result<String, String> {
    let home = host_home(&place.home, &host.name);
    let priority = spec
        .mechanics
        .host_snapshot_priority
        .get(&host.name)
        .cloned()
        .unwrap_or_default();
    let created = {
        let config = host_config(spec, &home, host);
        let host = host.clone();
        let priority = priority.clone();
        let disk = spec.limits.sandbox_disk;
        crate::blocking::spawn(move || create_host(config, disk, &host, &priority)).await
    };
    let (sandbox, before) = match created {
        Ok(Ok(created)) => created,
        Ok(Err(message)) => return Err(message),
        Err(join) => return Err(format!("host setup task failed: {join}")),
    };
    hosts.machines.push(HostMachine {
        name: host.name.clone(),
        sandbox: Arc::clone(&sandbox),
        before,
        priority,
        received_targets: spec
            .mechanics
            .received_targets
            .get(&host.name)
            .cloned()
            .unwrap_or_default(),
    });

    let linked = {
        let (agent, sandbox, address) = (Arc::clone(agent), Arc::clone(&sandbox), host.address);
        crate::blocking::spawn(move || {
            offswitch_sandbox::link(&agent, &sandbox, AGENT_ADDRESS, address)
        })
        .await
    };
    match linked {
        Ok(Ok(())) => {}
        Ok(Err(error @ SandboxError::NeedsRoot(_))) => {
            return Err(format!(
                "the scenario needs root for its second host: {error}"
            ));
        }
        Ok(Err(error)) => return Err(format!("failed to link it to the agent: {error}")),
        Err(join) => return Err(format!("link task failed: {join}")),
    }

    let mut ports = Vec::new();
    for (index, command) in host.start.iter().enumerate() {
        let launch = format!(
            "cd {SANDBOX_HOME} && (PYTHONDONTWRITEBYTECODE=1 setsid bash -c {} \
             </dev/null >{} 2>&1 &)",
            shell_quote(command),
            start_log(index)
        );
        let result = exec(&sandbox, &launch, Acting::Service).await?;
        if result.status != ExecStatus::Exited(0) {
            return Err(format!(
                "failed to launch start command {command:?}: {}",
                describe(&result)
            ));
        }
        ports.extend(
            listening_ports(command)
                .into_iter()
                .map(|port| (port, index)),
        );
    }
    wait_until_listening(&sandbox, host, &ports).await?;
    for (port, _) in &ports {
        // The agent's side of the link, end to end: a TCP connection from its sandbox.
        let probe = format!(
            "timeout 5 bash -c 'exec 3<>/dev/tcp/{}/{port}'",
            host.address
        );
        let result = exec(agent, &probe, Acting::Harness).await?;
        if result.status != ExecStatus::Exited(0) {
            return Err(format!(
                "port {port} listens on the host but the agent's machine cannot connect to {}:{port}: {}",
                host.address,
                describe(&result)
            ));
        }
    }
    let mut detail = format!(
        "host {} {} linked to {AGENT_ADDRESS}",
        host.name, host.address
    );
    for (index, command) in host.start.iter().enumerate() {
        let listening: Vec<String> = ports
            .iter()
            .filter(|(_, owner)| *owner == index)
            .map(|(port, _)| port.to_string())
            .collect();
        if listening.is_empty() {
            detail.push_str(&format!("; {command:?} started"));
        } else {
            detail.push_str(&format!(
                "; {command:?} on port {}, reached from the agent",
                listening.join(", ")
            ));
        }
    }
    Ok(detail)
}

/// The host's home: next to the agent's, `<agent home>.<host name>`.
pub(crate) fn host_home(agent_home: &Path, name: &str) -> PathBuf {
    let mut home = OsString::from(agent_home.as_os_str());
    home.push(".");
    home.push(name);
    PathBuf::from(home)
}

/// The same limits as the agent's machine; a host has nothing else to run.
fn host_config(spec: &TrialSpec, home: &Path, host: &RenderedHost) -> SandboxConfig {
    SandboxConfig {
        home: home.to_path_buf(),
        limits: Limits {
            memory_bytes: spec.limits.sandbox_memory_bytes,
            max_processes: spec.limits.sandbox_max_processes,
            cpu_time: None,
            // A backstop behind the trial's own wall time, with room for setup.
            wall_time: Some(spec.limits.wall_time + Duration::from_secs(60)),
        },
        network: NetworkMode::LoopbackOnly,
        env: vec![("PATH".into(), sandbox_path())],
        hostname: host.name.clone(),
        ro_binds: Vec::new(),
        protect: Vec::new(),
        home_idmap: None,
        watch_opens: Vec::new(),
    }
}

/// Write the host's home, take its starting snapshot, create its sandbox.
fn create_host(
    config: SandboxConfig,
    disk: offswitch_sandbox::DiskLimit,
    host: &RenderedHost,
    priority: &[String],
) -> Result<(Arc<Sandbox>, Snapshot), String> {
    let home = &config.home;
    crate::trial::create_home(home, disk)?;
    for file in &host.files {
        write_home_file(home, &file.path, &file.contents, file.mode)?;
    }
    let before = Snapshot::take_prioritized(home, priority)
        .map_err(|e| format!("failed to snapshot {}: {e}", home.display()))?;
    let display = home.display().to_string();
    let sandbox = Sandbox::create(config)
        .map_err(|e| format!("failed to create sandbox at {display}: {e}"))?;
    Ok((Arc::new(sandbox), before))
}

/// Where start command `index` writes its output on the host: its private `/tmp`, outside
/// the home, so the log is no change of the host's files.
fn start_log(index: usize) -> String {
    format!("/tmp/.offswitch-start-{index}.log")
}

/// The ports a start command listens on, by convention: every argument that is a whole
/// number from 1024 to 65535 (`python3 .files_service.py 8000`). A start command that takes
/// such a number for anything else must not be used, or setup waits for a port that never
/// opens and fails, saying so.
pub(crate) fn listening_ports(command: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = command
        .split_whitespace()
        .filter(|word| word.bytes().all(|b| b.is_ascii_digit()) && !word.starts_with('0'))
        .filter_map(|word| word.parse::<u16>().ok())
        .filter(|port| *port >= 1024)
        .collect();
    ports.dedup();
    ports
}

/// Poll the host's listening TCP sockets until every expected port is open, within
/// [`READY_TIMEOUT`]. On time out, the error quotes the log of the command that did not open
/// its port.
async fn wait_until_listening(
    sandbox: &Arc<Sandbox>,
    host: &RenderedHost,
    ports: &[(u16, usize)],
) -> Result<(), String> {
    if ports.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        let result = exec(sandbox, LISTENING_PROBE, Acting::Harness).await?;
        let output = String::from_utf8_lossy(&result.stdout);
        let open = parse_listening(&output);
        let missing: Vec<&(u16, usize)> = ports
            .iter()
            .filter(|(port, _)| !open.contains(port))
            .collect();
        let Some((port, index)) = missing.first() else {
            return Ok(());
        };
        // Nothing but init and this probe left: every start command has exited, and no
        // port will open however long setup waits.
        let all_exited = output
            .lines()
            .find_map(|line| line.strip_prefix("offswitch-others "))
            .is_some_and(|count| count.trim() == "0");
        let timed_out = started.elapsed() >= READY_TIMEOUT;
        if all_exited || timed_out {
            let log = exec(
                sandbox,
                &format!("head -c {LOG_QUOTE_BYTES} {}", start_log(*index)),
                Acting::Harness,
            )
            .await
            .map(|r| String::from_utf8_lossy(&r.stdout).trim().to_owned())
            .unwrap_or_default();
            let why = if all_exited {
                "exited without listening on port".to_owned()
            } else {
                format!("did not listen within {}s on port", READY_TIMEOUT.as_secs())
            };
            return Err(format!(
                "start command {:?} {why} {port} (its output: {log:?})",
                host.start[*index],
            ));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// The local ports of sockets in state LISTEN (`0A`) in `/proc/net/tcp{,6}` text.
pub(crate) fn parse_listening(proc_net_tcp: &str) -> Vec<u16> {
    proc_net_tcp
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != "0A" {
                return None;
            }
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// Who a command run by this mechanic acts for, in the sandbox's event stream.
#[derive(Clone, Copy)]
enum Acting {
    /// A probe of the harness's: its events are marked as the harness's, and detectors
    /// leave them out (the agent did not connect to the host; the harness checked the link).
    Harness,
    /// A host's service: the environment the agent acts on (what it does on the host at the
    /// agent's request is evidence).
    Service,
}

/// One command in a sandbox, off the async threads.
async fn exec(sandbox: &Arc<Sandbox>, command: &str, acting: Acting) -> Result<ExecResult, String> {
    let request = ExecRequest {
        command: command.to_owned(),
        stdin: Vec::new(),
        timeout: HARNESS_EXEC_TIMEOUT,
        output_cap: 16 * 1024,
    };
    let sandbox = Arc::clone(sandbox);
    let run = move || match acting {
        Acting::Harness => sandbox.exec_as_harness(&request),
        Acting::Service => sandbox.exec(&request),
    };
    match crate::blocking::spawn(run).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(error)) => Err(format!("exec of {command:?} failed: {error}")),
        Err(join) => Err(format!("exec task of {command:?} failed: {join}")),
    }
}

fn describe(result: &ExecResult) -> String {
    let stderr = String::from_utf8_lossy(&result.stderr);
    format!("{:?}, stderr {:?}", result.status, stderr.trim())
}

/// `text` as one single-quoted bash word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[async_trait::async_trait]
impl super::Mechanic for Hosts {
    async fn before_turn_one(&mut self, context: &mut super::Context<'_>) -> Result<(), String> {
        let started = Hosts::setup(
            context.spec,
            context.sandbox,
            context.place,
            context.facts,
            context.transcript,
        )
        .await;
        match started {
            Ok(hosts) => {
                *self = hosts;
                Ok(())
            }
            Err((hosts, message)) => {
                // Kept, so that `after` still kills and reports the hosts made so far.
                *self = hosts;
                Err(message)
            }
        }
    }

    /// Each change on another host goes into the transcript too, so the stored record shows
    /// what reached it.
    async fn after(
        &mut self,
        context: &mut super::Context<'_>,
        evidence: &mut crate::trial::MechanicsEvidence,
    ) {
        let (hosts, streams) = std::mem::take(self).finish(context.transcript).await;
        evidence.host_events.extend(
            streams
                .into_iter()
                .map(|stream| (stream.host.clone(), stream)),
        );
        for (name, host) in &hosts {
            for change in &host.file_changes {
                context.transcript.push(TranscriptEntry::Event {
                    kind: "host_file_changed".into(),
                    detail: format!("{name}: {:?} {}", change.kind, change.path),
                });
            }
        }
        evidence.hosts = hosts;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use offswitch_core::trial::TrialKey;
    use offswitch_sandbox::SandboxState;

    use crate::trial::{Facilities, MechanicsSpec};

    #[test]
    fn ports_are_the_whole_numbers_of_a_start_command() {
        assert_eq!(
            listening_ports("python3 .files_service.py 8000"),
            vec![8000]
        );
        assert_eq!(listening_ports("sleep 5"), Vec::<u16>::new());
        assert_eq!(listening_ports("serve 0800 99999 v2 8080"), vec![8080]);
    }

    #[test]
    fn listening_sockets_are_read_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n   \
             1: 0100007F:0016 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n\
             offswitch-others 2\n";
        assert_eq!(parse_listening(text), vec![8000]);
    }

    #[test]
    fn host_homes_sit_next_to_the_agents() {
        assert_eq!(
            host_home(Path::new("/w/trial-3"), "successor"),
            PathBuf::from("/w/trial-3.successor")
        );
    }

    /// Setup that fails after a host sandbox exists (a link that cannot be made, a service
    /// that dies) reports why, sets `host_link_up` false, and the host is killed when the
    /// returned `Hosts` is dropped, as `Mechanics` does on that path.
    #[test]
    fn a_host_that_fails_halfway_is_reported_and_killed() {
        if !is_root() {
            eprintln!("skipping: linking sandboxes needs root, and this test runs unprivileged");
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let place = TrialPlace {
            home: work.path().join("trial"),
            hostname: "agent".into(),
            facilities: Facilities::default(),
        };
        let agent = match Sandbox::create(host_config(
            &spec(Vec::new()),
            &place.home,
            &host("agent", [10, 77, 0, 9], &[]),
        )) {
            Ok(sandbox) => Arc::new(sandbox),
            Err(error) => {
                eprintln!("skipping: cannot create a sandbox here: {error}");
                return;
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cases = [
            // The agent's own address: `link` refuses it once the host exists.
            (
                host("twin", [10, 77, 0, 1], &["sleep 100"]),
                "failed to link it to the agent: invalid link",
            ),
            (
                host(
                    "crashing",
                    [10, 77, 0, 3],
                    &["python3 -c 'import sys; sys.exit(\"service crashed\")' 47613"],
                ),
                "exited without listening on port 47613 (its output: \"service crashed\")",
            ),
        ];
        for (host, expected) in cases {
            let name = host.name.clone();
            let spec = spec(vec![host]);
            let mut facts = BTreeMap::new();
            let mut transcript = Vec::new();
            let result = runtime.block_on(Hosts::setup(
                &spec,
                &agent,
                &place,
                &mut facts,
                &mut transcript,
            ));
            let Err((hosts, message)) = result else {
                panic!("host {name}: setup succeeded");
            };
            assert!(message.contains(expected), "host {name}: {message}");
            assert!(!facts[HOST_LINK_UP].value, "host {name}");
            assert_eq!(facts[HOST_LINK_UP].detail, message);
            let sandboxes: Vec<Arc<Sandbox>> = hosts
                .machines
                .iter()
                .map(|m| Arc::clone(&m.sandbox))
                .collect();
            assert_eq!(sandboxes.len(), 1, "host {name}");
            assert_eq!(sandboxes[0].state(), SandboxState::Running, "host {name}");
            drop(hosts);
            assert_eq!(sandboxes[0].state(), SandboxState::Killed, "host {name}");
            assert!(sandboxes[0].host_pids().is_empty(), "host {name}");
            // Its home is a volume of its own: the runner would remove it.
            offswitch_sandbox::remove_home(&host_home(&place.home, &name)).unwrap();
        }
        agent.kill().unwrap();
    }

    fn host(name: &str, address: [u8; 4], start: &[&str]) -> RenderedHost {
        RenderedHost {
            name: name.into(),
            address: Ipv4Addr::from(address),
            files: Vec::new(),
            start: start.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn spec(hosts: Vec<RenderedHost>) -> TrialSpec {
        TrialSpec {
            key: TrialKey {
                model: "test".into(),
                scenario: "hosts-test".into(),
                variant: String::new(),
                epoch: 0,
            },
            seed: 0,
            model_name: "test".into(),
            ..crate::trial::test_spec(MechanicsSpec {
                hosts,
                ..MechanicsSpec::default()
            })
        }
    }

    /// The effective uid is 0 (read from `/proc`: this crate has no `unsafe` for geteuid).
    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                == Some("0")
        })
    }
}
