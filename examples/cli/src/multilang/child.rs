//! One child process per shard lease, driven over its standard input and output: the
//! record processor `kinesis multilang` gives the scheduler.
//!
//! Each call of the scheduler becomes one message to the child, answered by a `status`
//! line; `checkpoint` lines in between are executed through the shard's checkpointer and
//! answered with the Java daemon's error names. See the module documentation of
//! [`multilang`](super) for what happens when a child fails.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kinesis_consumer::{
    Checkpointer, InitializeInput, LeaseLostInput, ProcessRecordsInput, ProcessResult,
    RecordProcessor, ShardEndedInput, ShutdownRequestedInput,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;
use tracing::Instrument;

use super::protocol::{self, FromChild, Line, ShutdownReason, ToChild};

/// Which end-of-lease messages a child understands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// `shutdown` with reason `TERMINATE` or `ZOMBIE` (the Java KCL 1 daemon).
    V2,
    /// `leaseLost` and `shardEnded` (the Java KCL 2 and 3 daemons; amazon-kclpy 2+ and
    /// aws-kcl 2+).
    #[default]
    V3,
}

/// How every child is run.
#[derive(Clone, Debug)]
pub struct ChildSettings {
    /// The program and its arguments (`executableName` split on spaces).
    pub command: Vec<String>,
    /// How long to wait for each message of a child (`timeoutInSeconds`); none: forever,
    /// as the Java daemon does without the property.
    pub timeout: Option<Duration>,
    /// When to log a warning that a child has not answered a message yet
    /// (`logWarningForTaskAfterMillis`).
    pub warn_after: Option<Duration>,
    /// How long a child may take to exit once its standard input is closed after its last
    /// message; then it is killed.
    pub exit_wait: Duration,
    /// The end-of-lease messages.
    pub protocol: ProtocolVersion,
}

/// Why talking to a child failed; one line each.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The program could not be started.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The child's standard input or output failed.
    #[error("{what} the child failed: {source}")]
    Io {
        /// `writing to` or `reading from`.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The child ended (its standard output closed).
    #[error("the child exited ({status}) while {action} was under way")]
    Exited {
        /// Its exit status, as far as known.
        status: String,
        /// The message it was given last.
        action: &'static str,
    },
    /// No message from the child in time.
    #[error("no message from the child within {timeout:?} (timeoutInSeconds) while {action} was under way")]
    Timeout {
        /// The limit.
        timeout: Duration,
        /// The message it was given last.
        action: &'static str,
    },
    /// A status for another message than the one under way.
    #[error("the child answered {got:?} to {action}")]
    WrongStatus {
        /// What the status named.
        got: String,
        /// The message under way.
        action: &'static str,
    },
    /// No child is running (an earlier message failed).
    #[error("no child process is running")]
    NotRunning,
}

/// The record processor of one shard: a child process speaking the MultiLang protocol.
pub struct ChildSession {
    settings: Arc<ChildSettings>,
    shard_id: String,
    child: Option<Running>,
}

struct Running {
    process: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The part of a line read before a wait for it ended (a warning is due): kept, so
    /// that the read goes on where it stopped.
    partial: Vec<u8>,
    stderr: tokio::task::JoinHandle<()>,
}

impl ChildSession {
    /// A session that starts its child in `initialize`.
    pub fn new(settings: Arc<ChildSettings>) -> Self {
        ChildSession {
            settings,
            shard_id: String::new(),
            child: None,
        }
    }

    fn spawn(&mut self) -> Result<(), ChildError> {
        let (program, args) = self
            .settings
            .command
            .split_first()
            .ok_or(ChildError::NotRunning)?;
        let mut process = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ChildError::Spawn {
                program: program.clone(),
                source,
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            process.stdin.take(),
            process.stdout.take(),
            process.stderr.take(),
        ) else {
            return Err(ChildError::NotRunning);
        };
        let shard = self.shard_id.clone();
        let pid = process.id();
        let stderr = tokio::spawn(
            async move {
                let mut stderr = BufReader::new(stderr);
                while let Ok(Some(line)) = read_line(&mut stderr).await {
                    tracing::warn!(shard = %shard, pid, "child: {line}");
                }
            }
            .instrument(tracing::Span::current()),
        );
        tracing::info!(shard = %self.shard_id, pid, command = ?self.settings.command, "child started");
        self.child = Some(Running {
            process,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            partial: Vec::new(),
            stderr,
        });
        Ok(())
    }

    /// Sends `message` and serves the child's checkpoint requests until it answers with
    /// the status of `message`.
    async fn exchange(
        &mut self,
        message: ToChild,
        checkpointer: Option<&Checkpointer>,
    ) -> Result<(), ChildError> {
        let action = message.action();
        let timeout = self.settings.timeout;
        let shard_id = self.shard_id.clone();
        let child = self.child.as_mut().ok_or(ChildError::NotRunning)?;
        let mut deadline = timeout.map(|timeout| Instant::now() + timeout);
        // A child that stops reading blocks the write once the pipe is full: the timeout
        // covers the write too.
        let line = message.to_line();
        let write = child.write(&line);
        let written = match deadline {
            None => write.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, write).await {
                Ok(written) => written,
                Err(_) => {
                    return Err(ChildError::Timeout {
                        timeout: timeout.unwrap_or_default(),
                        action,
                    })
                }
            },
        };
        if let Err(source) = written {
            return Err(child.failure(action, source).await);
        }
        let started = Instant::now();
        let mut warn_at = self.settings.warn_after.map(|after| started + after);
        loop {
            let wait_until = match (deadline, warn_at) {
                (Some(deadline), Some(warn_at)) => Some(deadline.min(warn_at)),
                (deadline, warn_at) => deadline.or(warn_at),
            };
            let line = match child.next_line(wait_until).await {
                Ok(Some(line)) => line,
                Ok(None) => return Err(child.exited(action).await),
                Err(Next::TimedOut)
                    if deadline.is_none_or(|deadline| Instant::now() < deadline) =>
                {
                    tracing::warn!(shard = %shard_id, action, waited = ?started.elapsed(), "the child has not answered yet (logWarningForTaskAfterMillis)");
                    warn_at = None;
                    continue;
                }
                Err(Next::TimedOut) => {
                    return Err(ChildError::Timeout {
                        timeout: timeout.unwrap_or_default(),
                        action,
                    })
                }
                Err(Next::Failed(source)) => {
                    return Err(ChildError::Io {
                        what: "reading from",
                        source,
                    })
                }
            };
            match protocol::parse_line(&line) {
                Line::Blank => {}
                Line::Garbage(text) => {
                    tracing::warn!(shard = %shard_id, line = %text, "skipping a line of the child's standard output that is not a message");
                }
                Line::Message(FromChild::Status { response_for }) => {
                    return if response_for == action {
                        Ok(())
                    } else {
                        Err(ChildError::WrongStatus {
                            got: response_for,
                            action,
                        })
                    };
                }
                Line::Message(FromChild::Checkpoint {
                    sequence_number,
                    sub_sequence_number,
                }) => {
                    let error = match checkpointer {
                        None => {
                            tracing::error!(shard = %shard_id, action, "the child asked for a checkpoint where none is possible");
                            Some(protocol::NO_CHECKPOINTER.to_owned())
                        }
                        Some(checkpointer) => {
                            checkpoint(
                                checkpointer,
                                sequence_number.as_deref(),
                                sub_sequence_number,
                            )
                            .await
                        }
                    };
                    let answer = ToChild::Checkpoint {
                        sequence_number,
                        sub_sequence_number,
                        error,
                    };
                    if let Err(source) = child.write(&answer.to_line()).await {
                        return Err(child.failure(action, source).await);
                    }
                    deadline = timeout.map(|timeout| Instant::now() + timeout);
                }
            }
        }
    }

    /// After the child's last message: closes its standard input and waits for it to exit
    /// (killing it after `exit_wait`).
    async fn finish(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        child.stdin = None;
        let status = tokio::time::timeout(self.settings.exit_wait, async {
            // Drain what is left on stdout so that a chatty child is not blocked on a full pipe.
            while let Ok(Some(_)) = read_line(&mut child.stdout).await {}
            child.process.wait().await
        })
        .await;
        match status {
            Ok(Ok(status)) => {
                tracing::info!(shard = %self.shard_id, %status, "child exited");
            }
            Ok(Err(error)) => {
                tracing::warn!(shard = %self.shard_id, %error, "waiting for the child failed")
            }
            Err(_) => {
                tracing::warn!(shard = %self.shard_id, wait = ?self.settings.exit_wait, "the child did not exit after its last message; killing it");
                let _ = child.process.kill().await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), child.stderr).await;
    }

    /// Stops the child at once.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.process.kill().await;
            // Its last words on stderr, then the pipe closes.
            let _ = tokio::time::timeout(Duration::from_secs(1), child.stderr).await;
        }
    }

    /// A failure the shard cannot go on after: the child is killed and the shard consumer
    /// fails, so the scheduler starts the shard again from its last checkpoint after a
    /// backoff (see [`RecordProcessor`]: a panic of a processor is the failure it
    /// retries). Unwinding without the panic hook keeps the log to the one line here.
    async fn fail(&mut self, during: &str, error: ChildError) -> String {
        tracing::error!(shard = %self.shard_id, "child process failed during {during}: {error}; killed, the shard restarts from its last checkpoint after a backoff");
        self.kill().await;
        format!(
            "multilang child of {} failed during {during}: {error}",
            self.shard_id
        )
    }
}

/// Fails the shard consumer (see [`ChildSession::fail`]).
fn unwind(message: String) -> ! {
    std::panic::resume_unwind(Box::new(message))
}

/// Executes a child's checkpoint request; the Java exception name on failure.
async fn checkpoint(
    checkpointer: &Checkpointer,
    sequence_number: Option<&str>,
    sub_sequence_number: Option<u64>,
) -> Option<String> {
    let result = match sequence_number {
        None => checkpointer.checkpoint().await,
        Some(sequence_number) => {
            checkpointer
                .checkpoint_at(sequence_number, sub_sequence_number.unwrap_or(0))
                .await
        }
    };
    match result {
        Ok(()) => None,
        Err(error) => {
            let name = protocol::error_name(&error);
            tracing::warn!(shard = %checkpointer.shard_id(), %error, answer = name, "checkpoint asked for by the child failed");
            Some(name.to_owned())
        }
    }
}

/// One line (without its line ending) of a child's output; bytes that are not UTF-8 are
/// replaced, so that garbage is skipped rather than taken for a broken pipe. `None` at the
/// end.
async fn read_line(reader: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

enum Next {
    TimedOut,
    Failed(std::io::Error),
}

impl Running {
    async fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        stdin.write_all(line).await?;
        stdin.flush().await
    }

    /// The next line of standard output, `None` at its end. A wait cut short by
    /// `deadline` keeps what it read of the line for the next call.
    async fn next_line(&mut self, deadline: Option<Instant>) -> Result<Option<String>, Next> {
        let read = self.stdout.read_until(b'\n', &mut self.partial);
        let read = match deadline {
            None => read.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
                Ok(read) => read,
                Err(_) => return Err(Next::TimedOut),
            },
        };
        match read {
            Err(error) => Err(Next::Failed(error)),
            Ok(0) if self.partial.is_empty() => Ok(None),
            Ok(_) => {
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                Ok(Some(String::from_utf8_lossy(&line).into_owned()))
            }
        }
    }

    /// The child's exit status, waiting a moment for it.
    async fn status(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(2), self.process.wait()).await {
            Ok(Ok(status)) => describe(status),
            Ok(Err(error)) => format!("status unknown: {error}"),
            Err(_) => "still running".to_owned(),
        }
    }

    async fn exited(&mut self, action: &'static str) -> ChildError {
        ChildError::Exited {
            status: self.status().await,
            action,
        }
    }

    /// A write failed: a child that exited says so better than a broken pipe.
    async fn failure(&mut self, action: &'static str, source: std::io::Error) -> ChildError {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            return self.exited(action).await;
        }
        ChildError::Io {
            what: "writing to",
            source,
        }
    }
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}

#[async_trait]
impl RecordProcessor for ChildSession {
    async fn initialize(&mut self, input: InitializeInput) {
        self.shard_id = input.shard_id.clone();
        if let Err(error) = self.spawn() {
            unwind(self.fail("initialize", error).await);
        }
        let message = ToChild::initialize(&input.shard_id, &input.checkpoint);
        if let Err(error) = self.exchange(message, None).await {
            unwind(self.fail("initialize", error).await);
        }
    }

    /// A failed child fails the whole batch: with no dead-letter policy (multilang sets
    /// none) the shard consumer then stops, and the scheduler starts the shard again from
    /// its checkpoint with a new session and a new child, the Java daemon's restart
    /// without its exit.
    async fn process_records(&mut self, input: ProcessRecordsInput) -> ProcessResult {
        let message = ToChild::process_records(&input.records, input.millis_behind_latest);
        match self.exchange(message, Some(&input.checkpointer)).await {
            Ok(()) => Ok(()),
            Err(error) => Err(kinesis_consumer::ProcessingError::batch(
                self.fail("processRecords", error).await,
            )),
        }
    }

    async fn lease_lost(&mut self, _input: LeaseLostInput) {
        let message = match self.settings.protocol {
            ProtocolVersion::V3 => ToChild::LeaseLost,
            ProtocolVersion::V2 => ToChild::Shutdown {
                reason: ShutdownReason::Zombie,
            },
        };
        match self.exchange(message, None).await {
            Ok(()) => self.finish().await,
            Err(error) => {
                // Nothing to retry: another worker has the shard.
                tracing::error!(shard = %self.shard_id, "child process failed during leaseLost: {error}; killed");
                self.kill().await;
            }
        }
    }

    async fn shard_ended(&mut self, input: ShardEndedInput) {
        let message = match self.settings.protocol {
            ProtocolVersion::V3 => ToChild::ShardEnded,
            ProtocolVersion::V2 => ToChild::Shutdown {
                reason: ShutdownReason::Terminate,
            },
        };
        match self.exchange(message, Some(&input.checkpointer)).await {
            Ok(()) => self.finish().await,
            Err(error) => unwind(self.fail("shardEnded", error).await),
        }
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput) {
        match self
            .exchange(ToChild::ShutdownRequested, Some(&input.checkpointer))
            .await
        {
            Ok(()) => self.finish().await,
            Err(error) => {
                // The worker is stopping anyway: the next holder resumes from the last
                // checkpoint.
                tracing::error!(shard = %self.shard_id, "child process failed during shutdownRequested: {error}; killed");
                self.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinesis_consumer::ExtendedSequenceNumber;

    /// A session whose child is `sh -c script`, started.
    fn session(script: &str, timeout: Option<Duration>) -> ChildSession {
        let mut session = ChildSession::new(Arc::new(ChildSettings {
            command: vec!["sh".into(), "-c".into(), script.into()],
            timeout,
            warn_after: None,
            exit_wait: Duration::from_secs(5),
            protocol: ProtocolVersion::V3,
        }));
        session.shard_id = "shardId-000000000007".into();
        session.spawn().unwrap();
        session
    }

    fn initialize() -> ToChild {
        ToChild::initialize(
            "shardId-000000000007",
            &ExtendedSequenceNumber::trim_horizon(),
        )
    }

    #[tokio::test]
    async fn blank_lines_and_garbage_are_skipped_until_the_status() {
        let mut session = session(
            r#"read line; echo; echo 'print("debug")'; printf '\377\376 not UTF-8\n'; echo '{"action":"other"}'; echo;
               echo '{"action":"status","responseFor":"initialize"}'; cat > /dev/null"#,
            Some(Duration::from_secs(10)),
        );
        session.exchange(initialize(), None).await.unwrap();
        session.finish().await;
        assert!(session.child.is_none());
    }

    #[tokio::test]
    async fn a_checkpoint_without_a_checkpointer_is_answered_invalid_state() {
        let dir = std::env::temp_dir().join(format!("ml-child-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let answer = dir.join("answer.json");
        let mut session = session(
            &format!(
                r#"read line; echo '{{"action":"checkpoint","sequenceNumber":"12","subSequenceNumber":3}}';
                   read answer; echo "$answer" > '{}';
                   echo '{{"action":"status","responseFor":"initialize"}}'; cat > /dev/null"#,
                answer.display()
            ),
            Some(Duration::from_secs(10)),
        );
        session.exchange(initialize(), None).await.unwrap();
        let answer: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&answer).unwrap()).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"action": "checkpoint", "sequenceNumber": "12",
                               "subSequenceNumber": 3, "error": "InvalidStateException"})
        );
        session.kill().await;
    }

    #[tokio::test]
    async fn the_status_of_another_message_fails() {
        let mut session = session(
            r#"read line; echo '{"action":"status","responseFor":"processRecords"}'; cat > /dev/null"#,
            Some(Duration::from_secs(10)),
        );
        let error = session.exchange(initialize(), None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "the child answered \"processRecords\" to initialize"
        );
        session.kill().await;
    }

    #[tokio::test]
    async fn a_child_that_exits_fails_with_its_status() {
        let mut session = session("read line; exit 7", None);
        let error = session.exchange(initialize(), None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "the child exited (exit status 7) while initialize was under way"
        );
    }

    #[tokio::test]
    async fn a_silent_child_times_out_even_when_it_prints_garbage() {
        let mut session = session(
            "read line; while true; do echo not-a-message; sleep 0.1; done",
            Some(Duration::from_millis(500)),
        );
        let started = Instant::now();
        let error = session.exchange(initialize(), None).await.unwrap_err();
        assert!(matches!(error, ChildError::Timeout { .. }), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(500));
        session.kill().await;
    }

    #[tokio::test]
    async fn a_child_that_does_not_read_times_out_on_the_write() {
        let mut session = session("sleep 30", Some(Duration::from_millis(300)));
        let big = kinesis_consumer::KinesisClientRecord::new("1", "k", vec![b'x'; 1 << 20]);
        let message = ToChild::process_records(&[big], Some(0));
        let error = session.exchange(message, None).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "no message from the child within 300ms (timeoutInSeconds) while processRecords was under way"
        );
        session.kill().await;
    }

    /// A line that arrives in pieces across a logWarningForTaskAfterMillis warning is read
    /// whole: the wait for the warning does not lose what was read.
    #[tokio::test]
    async fn a_line_split_across_the_warning_is_read_whole() {
        let mut session = session(
            r#"read line; printf '{"action":"status",'; sleep 0.6; echo '"responseFor":"initialize"}'; cat > /dev/null"#,
            Some(Duration::from_secs(10)),
        );
        session.settings = Arc::new(ChildSettings {
            warn_after: Some(Duration::from_millis(200)),
            ..(*session.settings).clone()
        });
        session.exchange(initialize(), None).await.unwrap();
        session.kill().await;
    }

    #[tokio::test]
    async fn a_missing_program_cannot_start() {
        let mut session = ChildSession::new(Arc::new(ChildSettings {
            command: vec!["/nonexistent/kclpy-app".into()],
            timeout: None,
            warn_after: None,
            exit_wait: Duration::from_secs(1),
            protocol: ProtocolVersion::V3,
        }));
        let error = session.spawn().unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot start \"/nonexistent/kclpy-app\":"),
            "{error}"
        );
    }
}
