//! `schnell devices`: the back ends this build has and what each sees.

use anyhow::{bail, Result};

/// Prints each back end; fails when a compiled-in GPU back end sees no
/// device, so scripts can test for a usable GPU.
pub async fn run() -> Result<()> {
    // Opening a driver can block for seconds: not on the runtime's threads.
    let reports = tokio::task::spawn_blocking(schnell::flux::backend_reports).await?;
    for report in &reports {
        println!("{report}");
    }
    let unusable: Vec<&str> = reports
        .iter()
        .filter(|r| {
            r.compiled && r.backend != "cpu" && !matches!(&r.devices, Ok(d) if !d.is_empty())
        })
        .map(|r| r.backend)
        .collect();
    if !unusable.is_empty() {
        bail!("compiled in but no device: {}", unusable.join(", "));
    }
    Ok(())
}
