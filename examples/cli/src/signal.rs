//! Ctrl-C and SIGTERM: process managers send SIGTERM, so both stop gracefully.

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// After a first signal: the next Ctrl-C or SIGTERM ends the process at once (exit
/// status 130), without waiting for what the first one started.
pub(crate) fn abort_on_next_signal() {
    tokio::spawn(async {
        stop_signal().await;
        eprintln!("kinesis: second signal: aborting");
        std::process::exit(130);
    });
}
