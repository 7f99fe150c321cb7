//! What the producer handles hand to the pipeline task: commands pushed under a short
//! lock and taken by the pipeline in bulk, with one wake-up per batch rather than per
//! record. The receipt of each record is allocated here too, in the same lock.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};

use crate::pending::Admitted;
use crate::receipt::{ReceiptSlots, RecordReceipt};

/// Commands kept in a drained inbox's buffer for the next batch; above this the buffer
/// is freed, so a burst does not pin its memory.
const KEPT_CAPACITY: usize = 4_096;

/// What the producer handles ask of the pipeline.
#[derive(Debug)]
pub(crate) enum Command {
    /// A validated user record, holding its buffer permits.
    Record(Admitted),
    /// Answer once every record sent before this is complete.
    Flush(oneshot::Sender<()>),
    /// Complete everything, answer, and stop.
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug, Default)]
struct State {
    commands: Vec<Command>,
    receipts: ReceiptSlots,
    /// The pipeline stopped: nothing pushed now would be read.
    closed: bool,
    /// Every producer handle is gone: nothing more will be pushed.
    handles_gone: bool,
}

/// The queue from the producer handles to the pipeline.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    notify: Notify,
}

/// What the pipeline took from the inbox.
pub(crate) struct Taken {
    /// Whether every producer handle is gone (so no command will follow).
    pub handles_gone: bool,
}

impl Inbox {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a single push or assignment: a panic elsewhere
        // cannot leave the state half-written.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a record and gives its receipt; if the pipeline stopped, drops the record
    /// and gives its size back (for the buffer space it held).
    pub fn push_record(&self, mut record: Admitted) -> Result<RecordReceipt, usize> {
        let (receipt, was_empty) = {
            let mut state = self.state();
            if state.closed {
                return Err(record.size());
            }
            let (receipt, completion) = state.receipts.next();
            record.completion = Some(completion);
            state.commands.push(Command::Record(record));
            (receipt, state.commands.len() == 1)
        };
        // Once per batch: the pipeline takes every command queued after this at once.
        if was_empty {
            self.notify.notify_one();
        }
        Ok(receipt)
    }

    /// Queues a flush or shutdown; `false` if the pipeline stopped.
    pub fn push(&self, command: Command) -> bool {
        let was_empty = {
            let mut state = self.state();
            if state.closed {
                return false;
            }
            state.commands.push(command);
            state.commands.len() == 1
        };
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Waits until commands may be waiting (a permit stays stored if they came while
    /// nobody waited).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Moves every queued command into `into` (which must be empty).
    pub fn take(&self, into: &mut Vec<Command>) -> Taken {
        if into.capacity() > KEPT_CAPACITY {
            *into = Vec::new();
        }
        let mut state = self.state();
        std::mem::swap(&mut state.commands, into);
        Taken {
            handles_gone: state.handles_gone,
        }
    }

    /// Every producer handle is gone.
    pub fn handles_gone(&self) {
        self.state().handles_gone = true;
        self.notify.notify_one();
    }

    /// The pipeline stopped: refuses new commands and drops the queued ones (their
    /// receipts resolve to [`RecordError::Abandoned`](crate::RecordError::Abandoned)).
    pub fn close(&self) {
        let commands = {
            let mut state = self.state();
            state.closed = true;
            std::mem::take(&mut state.commands)
        };
        drop(commands);
    }
}
