//! `--metrics-listen ADDR`: the libraries' metrics (the KPL's and the KCL's sets, through
//! the `metrics` facade) in the Prometheus text format at `http://ADDR/metrics`, served
//! by `metrics-exporter-prometheus` while the subcommand runs.

use std::net::SocketAddr;

use crate::Error;

/// Installs the Prometheus recorder and its HTTP listener on `addr`, if given. Call it
/// before building a producer or a scheduler: they describe their metrics (unit, help
/// text) to the recorder installed then.
pub fn serve(addr: Option<SocketAddr>) -> Result<(), Error> {
    let Some(addr) = addr else {
        return Ok(());
    };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|error| format!("--metrics-listen {addr}: {error}"))?;
    tracing::info!("metrics at http://{addr}/metrics");
    Ok(())
}
