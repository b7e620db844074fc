//! The node processes of a localnet: started from this same binary, each in its own process
//! group (so a Ctrl-C in the terminal reaches only the orchestrator, which then stops them in
//! order) and tied to the orchestrator's life (if it dies, they get SIGTERM: no orphans).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, Result};

pub struct Member {
    pub name: String,
    pub log: PathBuf,
    args: Vec<OsString>,
    child: Child,
    pub exit: Option<ExitStatus>,
}

impl Member {
    /// The exit code once exited (`None` while running or when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.exit.and_then(|s| s.code())
    }
}

#[derive(Default)]
pub struct Fleet {
    pub members: Vec<Member>,
}

impl Fleet {
    /// Starts `templar ARGS…` as `name`, its output appended to `log`.
    pub fn spawn(&mut self, name: &str, args: &[OsString], log: &Path) -> Result<()> {
        let child = start(name, args, log)?;
        self.members.push(Member {
            name: name.to_string(),
            log: log.to_path_buf(),
            args: args.to_vec(),
            child,
            exit: None,
        });
        Ok(())
    }

    /// Kills `name` with SIGKILL — no chance to finish a write — and reaps it.
    pub fn sigkill(&mut self, name: &str) -> Result<()> {
        let member = self
            .members
            .iter_mut()
            .find(|m| m.name == name && m.exit.is_none())
            .with_context(|| format!("{name} is not running"))?;
        member
            .child
            .kill()
            .with_context(|| format!("killing {name}"))?;
        member.exit = Some(member.child.wait()?);
        Ok(())
    }

    /// Starts `name` again with the command line it was first started with.
    pub fn respawn(&mut self, name: &str) -> Result<()> {
        let member = self
            .members
            .iter_mut()
            .find(|m| m.name == name)
            .with_context(|| format!("{name} was never started"))?;
        if member.exit.is_none() {
            anyhow::bail!("{name} is still running");
        }
        member.child = start(name, &member.args, &member.log)?;
        member.exit = None;
        Ok(())
    }
}

fn start(name: &str, args: &[OsString], log: &Path) -> Result<Child> {
    {
        let program = std::env::current_exe().context("finding the templar binary")?;
        let output = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output);
        detach(&mut command);
        if args.first().is_some_and(|role| role == "miner") {
            yield_to_validators(&mut command);
        }
        command.spawn().with_context(|| format!("starting {name}"))
    }
}

impl Fleet {
    /// Records members that have exited since the last call and returns them.
    pub fn poll(&mut self) -> Vec<&Member> {
        let mut exited = Vec::new();
        for (i, member) in self.members.iter_mut().enumerate() {
            if member.exit.is_none()
                && let Ok(Some(status)) = member.child.try_wait()
            {
                member.exit = Some(status);
                exited.push(i);
            }
        }
        exited.into_iter().map(|i| &self.members[i]).collect()
    }

    pub fn running(&self) -> usize {
        self.members.iter().filter(|m| m.exit.is_none()).count()
    }

    /// Suspends `name` (SIGSTOP), as a laptop's lid or a preempted VM does: it holds its
    /// memory and sockets and does nothing until [`Fleet::resume`].
    pub fn suspend(&self, name: &str) -> Result<()> {
        signal(self.running_member(name)?, Signal::Stop);
        Ok(())
    }

    /// Asks `name` to stop (SIGTERM, what docker, systemd and pm2 send); [`Fleet::poll`]
    /// records its exit.
    pub fn terminate(&self, name: &str) -> Result<()> {
        signal(self.running_member(name)?, Signal::Terminate);
        Ok(())
    }

    /// How `name` exited: `None` while it runs, `Some(None)` when a signal ended it.
    pub fn exit_code(&self, name: &str) -> Option<Option<i32>> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.exit.map(|s| s.code()))
    }

    /// Lets a suspended `name` go on (SIGCONT).
    pub fn resume(&self, name: &str) -> Result<()> {
        signal(self.running_member(name)?, Signal::Continue);
        Ok(())
    }

    fn running_member(&self, name: &str) -> Result<&Child> {
        self.members
            .iter()
            .find(|m| m.name == name && m.exit.is_none())
            .map(|m| &m.child)
            .with_context(|| format!("{name} is not running"))
    }

    /// Asks every running node to finish its window and stop (what Ctrl-C does to one node);
    /// a second call makes them abandon the window.
    pub fn interrupt(&self) {
        for member in self.members.iter().filter(|m| m.exit.is_none()) {
            signal(&member.child, Signal::Interrupt);
        }
    }

    /// Kills whatever still runs and reaps it.
    pub fn kill(&mut self) {
        for member in self.members.iter_mut().filter(|m| m.exit.is_none()) {
            let _ = member.child.kill();
            member.exit = member.child.wait().ok();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Signal {
    Interrupt,
    Terminate,
    Stop,
    Continue,
}

#[cfg(unix)]
fn signal(child: &Child, signal: Signal) {
    let number = match signal {
        Signal::Interrupt => libc::SIGINT,
        Signal::Terminate => libc::SIGTERM,
        Signal::Stop => libc::SIGSTOP,
        Signal::Continue => libc::SIGCONT,
    };
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) only sends a signal; the pid is our own unreaped child, so it cannot have
    // been recycled for another process.
    unsafe {
        libc::kill(pid, number);
    }
}

#[cfg(not(unix))]
fn signal(_child: &Child, _signal: Signal) {}

#[cfg(target_os = "linux")]
pub fn detach(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2), which
    // is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// How much lower a localnet miner's CPU priority is than its validators' (a `nice` value).
/// Miners that overlap windows train all the time; on one machine that would starve the
/// validators' deadline-bound work (pinning payloads when a slot closes, judging before the next),
/// which nodes on machines of their own never compete for. Miners still get every cycle a
/// validator leaves idle.
const MINER_NICENESS: i32 = 10;

/// Starts the process at [`MINER_NICENESS`].
#[cfg(unix)]
fn yield_to_validators(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only setpriority(2),
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::setpriority(libc::PRIO_PROCESS as _, 0, MINER_NICENESS) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(unix))]
fn yield_to_validators(_command: &mut Command) {}

#[cfg(all(unix, not(target_os = "linux")))]
pub fn detach(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
}

#[cfg(not(unix))]
pub fn detach(_command: &mut Command) {}
