//! Running a rollout's commands on this host (activate, rollback, current, exec probes): each in
//! its own process group, its output in the agent's log, killed with everything it started when
//! it outlives its timeout, and an error that says why it did not succeed.

use std::collections::VecDeque;
use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::sys::{signal_process_group, Signal};

/// Lines of a command's output kept for the error message when it fails.
const OUTPUT_LINES_KEPT: usize = 5;
/// Longest line of a command's output that is logged or kept whole.
const MAX_LINE_CHARS: usize = 1_000;
/// After a command exited, how long its output may still take to drain (a process it left
/// behind may hold the pipes open).
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);

/// Why a command did not succeed. Its words go into the host's rollout reports
/// (`activation-failed`, `rollback-failed`) as they are.
#[derive(Debug, thiserror::Error)]
pub(super) enum CommandError {
    #[error("no command to run (an empty argv)")]
    EmptyArgv,
    #[error("cannot run {program:?}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for {program:?}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Past its timeout: killed with its process group.
    #[error("{program:?} timed out after {timeout_ms} ms and was killed{last_words}")]
    Killed { program: String, timeout_ms: u128, last_words: LastWords },
    /// Past its timeout: killed (`first_line_of`, whose command runs in the agent's group).
    #[error("{program:?} timed out after {timeout_ms} ms")]
    TimedOut { program: String, timeout_ms: u128 },
    /// Exited non-zero or was killed by a signal.
    #[error("{program:?} {exit}{last_words}")]
    Failed { program: String, exit: ExitDescription, last_words: LastWords },
}

/// The last line a failed command printed, as `: <line>` (nothing if it printed nothing).
#[derive(Debug, Default)]
pub(super) struct LastWords(Option<String>);

impl fmt::Display for LastWords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(line) => write!(f, ": {line}"),
            None => Ok(()),
        }
    }
}

/// How a process ended: `exited with code 3`, `was killed by signal 9`.
#[derive(Debug)]
pub(super) struct ExitDescription(ExitStatus);

impl fmt::Display for ExitDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::os::unix::process::ExitStatusExt;
        match (self.0.code(), self.0.signal()) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(signal)) => write!(f, "was killed by signal {signal}"),
            (None, None) => write!(f, "ended with {}", self.0),
        }
    }
}

/// Where a command's output goes in the agent's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OutputLog {
    /// Activations and rollbacks: an operator wants to see what they did.
    Info,
    /// Exec probes, which run every few seconds.
    Debug,
}

/// Runs `argv` in its own process group with its output in the agent's log (each line
/// prefixed with `label`), at most `timeout`: then (or if this future is dropped) the whole
/// group is killed. `Err` says why it did not succeed: exit code or signal, or the timeout,
/// with the last line of its stderr (or stdout).
pub(super) async fn run_command(argv: Vec<String>, timeout: Duration, label: String, log: OutputLog) -> Result<(), CommandError> {
    let Some((program, args)) = argv.split_first() else { return Err(CommandError::EmptyArgv) };
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| CommandError::Spawn { program: program.clone(), source })?;
    let mut group = ProcessGroup(child.id());
    let tails = Arc::new(Tails::default());
    let label: Arc<str> = label.into();
    let mut forwards = tokio::task::JoinSet::new();
    if let Some(stdout) = child.stdout.take() {
        forwards.spawn(forward_output(stdout, label.clone(), log, tails.clone(), false));
    }
    if let Some(stderr) = child.stderr.take() {
        forwards.spawn(forward_output(stderr, label.clone(), log, tails.clone(), true));
    }
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            // Reaped: the group id may be reused from here on, so it must not be signalled.
            group.0 = None;
            status
        }
        Ok(Err(source)) => return Err(CommandError::Wait { program: program.clone(), source }),
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            let _ = tokio::time::timeout(OUTPUT_DRAIN, async { while forwards.join_next().await.is_some() {} }).await;
            return Err(CommandError::Killed {
                program: program.clone(),
                timeout_ms: timeout.as_millis(),
                last_words: tails.last_words(),
            });
        }
    };
    let _ = tokio::time::timeout(OUTPUT_DRAIN, async { while forwards.join_next().await.is_some() {} }).await;
    if status.success() {
        return Ok(());
    }
    Err(CommandError::Failed { program: program.clone(), exit: ExitDescription(status), last_words: tails.last_words() })
}

/// Runs `argv` (killed at `timeout`) and returns the first line of its stdout, trimmed; `None`
/// if it printed nothing. A non-zero exit is an error.
pub(super) async fn first_line_of(argv: Vec<String>, timeout: Duration) -> Result<Option<String>, CommandError> {
    let Some((program, args)) = argv.split_first() else { return Err(CommandError::EmptyArgv) };
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => return Err(CommandError::Spawn { program: program.clone(), source }),
        Err(_) => return Err(CommandError::TimedOut { program: program.clone(), timeout_ms: timeout.as_millis() }),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last_words = LastWords(stderr.lines().last().map(str::to_string));
        return Err(CommandError::Failed { program: program.clone(), exit: ExitDescription(output.status), last_words });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout.lines().next().map(str::trim).filter(|line| !line.is_empty()).map(str::to_string))
}

/// A command's process group, killed when this is dropped unless it was reaped (`None`).
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // Its leader is not reaped yet, so the group id cannot have been reused. It may have
            // ended meanwhile (ESRCH): nothing left to kill.
            let _ = signal_process_group(pgid, Signal::Kill);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a command's stdout and stderr, for its error message.
#[derive(Default)]
struct Tails {
    stdout: Mutex<VecDeque<String>>,
    stderr: Mutex<VecDeque<String>>,
}

impl Tails {
    fn push(&self, stderr: bool, line: String) {
        let mut lines = if stderr { &self.stderr } else { &self.stdout }.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == OUTPUT_LINES_KEPT {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last line of stderr (of stdout if stderr said nothing), if any.
    fn last_words(&self) -> LastWords {
        let last = |lines: &Mutex<VecDeque<String>>| lines.lock().unwrap_or_else(PoisonError::into_inner).back().cloned();
        LastWords(last(&self.stderr).or_else(|| last(&self.stdout)))
    }
}

async fn forward_output(output: impl AsyncRead + Unpin, label: Arc<str>, log: OutputLog, tails: Arc<Tails>, stderr: bool) {
    let mut reader = BufReader::new(output);
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        match reader.read_until(b'\n', &mut bytes).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&bytes);
        let line: String = text.trim_end().chars().take(MAX_LINE_CHARS).collect();
        if line.is_empty() {
            continue;
        }
        let stream = if stderr { "stderr" } else { "stdout" };
        match log {
            OutputLog::Info => tracing::info!("{label} ({stream}): {line}"),
            OutputLog::Debug => tracing::debug!("{label} ({stream}): {line}"),
        }
        tails.push(stderr, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command past its timeout is killed with everything it started.
    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; echo waiting >&2; wait", pid_file.display());
        let started = std::time::Instant::now();
        let argv = vec!["sh".to_string(), "-c".into(), script];
        let error = run_command(argv, Duration::from_millis(500), "test".into(), OutputLog::Debug).await.unwrap_err();
        let error = error.to_string();
        assert!(error.contains("timed out after 500 ms and was killed: waiting"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let gone = (0..100).any(|_| {
            // SAFETY: signal 0 sends nothing: `kill` only checks whether process `pid` exists;
            // it takes two integers and touches no memory.
            let alive = unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid);
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "the command's child {pid} outlived the timeout");
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true)
    }
}
