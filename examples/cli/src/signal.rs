//! Ctrl-C and SIGTERM: process managers send SIGTERM, so both stop gracefully.

use std::future::Future;

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn stop_signal() {
    next_signal().await;
}

/// Signals this close after the first are the first again: `timeout` sends its signal to
/// the program and then to its process group, the program included.
const SAME_SIGNAL: std::time::Duration = std::time::Duration::from_millis(500);

/// After a first signal: the next Ctrl-C or SIGTERM ends the process at once (exit
/// status 130), without waiting for what the first one started, unless it comes within
/// [`SAME_SIGNAL`] of the call. It listens from the call on: a signal sent once it
/// returned is never missed.
pub(crate) fn abort_on_next_signal() {
    let first = tokio::time::Instant::now();
    let next = next_signal();
    tokio::spawn(async move {
        next.await;
        while first.elapsed() < SAME_SIGNAL {
            next_signal().await;
        }
        eprintln!("kinesis: second signal: aborting");
        std::process::exit(130);
    });
}

/// Listens for Ctrl-C and SIGTERM from the call on (not from the first poll, which may come
/// later): completes at the next one. A signal that cannot be listened for is logged and
/// never completes it.
fn next_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let listen = |listener: std::io::Result<tokio::signal::unix::Signal>, name| async move {
                match listener {
                    Ok(mut listener) => {
                        listener.recv().await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = listen(interrupt, "Ctrl-C") => {}
                () = listen(terminate, "SIGTERM") => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::warn!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    }
}
