//! The real processes of a chaos run: `consume` workers and one `produce`, started with
//! the standard AWS environment, signalled like an operator or a crash would, and their
//! output read line by line as it arrives.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::check::Delivery;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where a worker process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Running.
    Running,
    /// Stopped with SIGSTOP.
    Paused,
    /// Exited or killed.
    Gone,
}

/// One `consume` process.
pub struct Worker {
    /// Index in the fleet: the worker's identity.
    pub index: usize,
    /// Its `--worker-id`, written as `leaseOwner`.
    pub id: String,
    /// Its state.
    pub state: WorkerState,
    child: Child,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// What the workers printed, in arrival order.
#[derive(Default)]
pub struct Collected {
    /// Every parsed line.
    pub deliveries: Vec<Delivery>,
    /// Lines that were not a delivery (with the worker).
    pub unparsable: Vec<(usize, String)>,
}

/// Settings every worker gets.
pub struct FleetConfig {
    /// The `consume` binary.
    pub consume: PathBuf,
    /// Environment for every child: endpoints, region, credentials.
    pub env: Vec<(String, String)>,
    /// Stream.
    pub stream: String,
    /// Application (lease table).
    pub app: String,
    /// `--failover-ms`.
    pub failover: Duration,
    /// Folder for the workers' standard error.
    pub out_dir: PathBuf,
}

/// The workers of a run.
pub struct Fleet {
    config: FleetConfig,
    started: Instant,
    /// Every worker ever started; a restarted worker is a new one.
    pub workers: Vec<Worker>,
    /// Their output.
    pub collected: Arc<Mutex<Collected>>,
    /// The process id of every worker started, by index.
    pids: Arc<Mutex<std::collections::BTreeMap<usize, u32>>>,
}

fn lock(collected: &Mutex<Collected>) -> std::sync::MutexGuard<'_, Collected> {
    collected.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parses one `consume` line: `{"shard_id", "sequence_number", "sub_sequence_number",
/// "partition_key", "data"}` with data the producer's JSON `{"id", "key", ...}`.
pub fn parse_line(line: &str) -> Option<(String, String, u64, String, u64)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let data: serde_json::Value = serde_json::from_str(value["data"].as_str()?).ok()?;
    Some((
        value["shard_id"].as_str()?.to_owned(),
        value["sequence_number"].as_str()?.to_owned(),
        value["sub_sequence_number"].as_u64()?,
        value["partition_key"].as_str()?.to_owned(),
        data["id"].as_u64()?,
    ))
}

impl Fleet {
    /// A fleet with no worker yet; `started` is the run's time origin.
    pub fn new(config: FleetConfig, started: Instant) -> Self {
        Fleet {
            config,
            started,
            workers: Vec::new(),
            collected: Arc::new(Mutex::new(Collected::default())),
            pids: Arc::default(),
        }
    }

    /// The process ids of the workers, by index (kept up to date as workers start).
    pub fn pids(&self) -> Arc<Mutex<std::collections::BTreeMap<usize, u32>>> {
        self.pids.clone()
    }

    /// Worker ids by index, for reading the lease table.
    pub fn ids(&self) -> HashMap<String, usize> {
        self.workers
            .iter()
            .map(|w| (w.id.clone(), w.index))
            .collect()
    }

    /// Starts a new worker; returns its index.
    pub fn spawn(&mut self) -> Result<usize, Error> {
        let index = self.workers.len();
        let id = worker_id(index);
        let stderr = File::create(self.config.out_dir.join(format!("{id}.stderr")))?;
        let mut command = Command::new(&self.config.consume);
        command
            .args(["--stream", &self.config.stream, "--app", &self.config.app])
            .args(["--worker-id", &id, "--polling", "--from", "trim-horizon"])
            .args([
                "--failover",
                &format!("{}ms", self.config.failover.as_millis()),
                "--idle-between-reads",
                "200ms",
            ])
            .envs(self.config.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn,kinesis_consumer=info");
        }
        let mut child = command.spawn()?;
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, child.id());
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let collected = self.collected.clone();
        let started = self.started;
        // A thread per worker, blocked on its pipe: lines are stamped as soon as they are
        // written, whatever the async runtime is busy with.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = started.elapsed();
                let mut collected = lock(&collected);
                match parse_line(&line) {
                    Some((shard, sequence_number, sub_sequence_number, key, id)) => {
                        let n = collected.deliveries.len() as u64;
                        collected.deliveries.push(Delivery {
                            n,
                            at,
                            worker: index,
                            shard,
                            sequence_number,
                            sub_sequence_number,
                            key,
                            id,
                        });
                    }
                    None => collected.unparsable.push((index, line)),
                }
            }
        });
        self.workers.push(Worker {
            index,
            id,
            state: WorkerState::Running,
            child,
            reader: Some(reader),
        });
        Ok(index)
    }

    /// Indexes of running (not paused, not gone) workers.
    pub fn running(&self) -> Vec<usize> {
        self.workers
            .iter()
            .filter(|w| w.state == WorkerState::Running)
            .map(|w| w.index)
            .collect()
    }

    /// Sends a signal with `kill -s`.
    fn signal(&self, index: usize, signal: &str) -> Result<(), Error> {
        let pid = self.workers[index].child.id().to_string();
        let status = Command::new("kill").args(["-s", signal, &pid]).status()?;
        if !status.success() {
            return Err(format!("kill -s {signal} {pid} failed: {status}").into());
        }
        Ok(())
    }

    /// SIGKILL, and waits until the process is gone and its output read.
    pub fn kill(&mut self, index: usize) -> Result<(), Error> {
        // SIGKILL ends a stopped process too, without letting it run first.
        let worker = &mut self.workers[index];
        worker.child.kill()?;
        worker.child.wait()?;
        worker.state = WorkerState::Gone;
        if let Some(reader) = worker.reader.take() {
            let _ = reader.join();
        }
        Ok(())
    }

    /// SIGSTOP.
    pub fn pause(&mut self, index: usize) -> Result<(), Error> {
        self.signal(index, "STOP")?;
        self.workers[index].state = WorkerState::Paused;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, index: usize) -> Result<(), Error> {
        self.signal(index, "CONT")?;
        self.workers[index].state = WorkerState::Running;
        Ok(())
    }

    /// Sends `signal` (`TERM` or `INT`) and waits up to `timeout` for the process to
    /// exit; kills it after that. Returns its exit status, and whether it exited in
    /// time.
    pub async fn stop(
        &mut self,
        index: usize,
        signal: &str,
        timeout: Duration,
    ) -> Result<(ExitStatus, bool), Error> {
        self.signal(index, signal)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.workers[index].child.try_wait()? {
                let worker = &mut self.workers[index];
                worker.state = WorkerState::Gone;
                if let Some(reader) = worker.reader.take() {
                    let _ = reader.join();
                }
                return Ok((status, true));
            }
            if Instant::now() > deadline {
                self.kill(index)?;
                let status = self.workers[index].child.wait()?;
                return Ok((status, false));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Workers that exited on their own (crashed) while they should be running.
    pub fn reap_crashed(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut crashed = Vec::new();
        for worker in &mut self.workers {
            if worker.state == WorkerState::Running {
                if let Ok(Some(status)) = worker.child.try_wait() {
                    worker.state = WorkerState::Gone;
                    crashed.push((worker.index, status));
                }
            }
        }
        crashed
    }

    /// Kills whatever still runs (used when the harness itself fails).
    pub fn kill_all(&mut self) {
        for index in 0..self.workers.len() {
            if self.workers[index].state != WorkerState::Gone {
                let _ = self.kill(index);
            }
        }
    }

    /// Deliveries so far.
    pub fn delivered_ids(&self) -> std::collections::HashSet<u64> {
        lock(&self.collected)
            .deliveries
            .iter()
            .map(|d| d.id)
            .collect()
    }

    /// Takes everything collected.
    pub fn take_collected(&self) -> Collected {
        std::mem::take(&mut *lock(&self.collected))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The worker id of the worker with this index (`--worker-id`).
pub fn worker_id(index: usize) -> String {
    format!("chaos-w{index}")
}

#[cfg(test)]
mod tests {
    use super::parse_line;

    #[test]
    fn parses_a_consume_line() {
        let line = r#"{"shard_id":"shardId-000000000003","sequence_number":"4959","sub_sequence_number":2,"partition_key":"key-7","data":"{\"id\":42,\"key\":\"key-7\",\"pad\":\"..\"}"}"#;
        assert_eq!(
            parse_line(line),
            Some((
                "shardId-000000000003".into(),
                "4959".into(),
                2,
                "key-7".into(),
                42
            ))
        );
        assert_eq!(parse_line("consume: something else"), None);
    }
}
