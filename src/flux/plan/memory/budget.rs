//! How much memory the device has, and `--quant auto`'s pick under it.

use crate::flux::error::FluxError;
use crate::flux::plan::choice::QuantPlan;
use crate::flux::plan::device::DeviceChoice;
use crate::flux::weights::quant::{Quant, T5Quant};

use super::estimate::*;
use super::params::*;

/// Memory the device has to give, and where that figure came from.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryBudget {
    /// The memory, in bytes.
    pub bytes: u64,
    /// "available RAM", "free memory on cuda:0", "--memory-budget".
    pub source: String,
}

impl MemoryBudget {
    /// Measures the device: free GPU memory on CUDA, available RAM on the CPU
    /// and on Metal (whose memory is the system's). Blocking.
    pub fn measure(device: DeviceChoice) -> Result<Self, FluxError> {
        match device {
            DeviceChoice::Cpu | DeviceChoice::Metal => {
                let mut sys = sysinfo::System::new();
                sys.refresh_memory();
                let available = sys.available_memory();
                // In a container with a memory limit, that limit is what the
                // kernel enforces: the headroom is the limit less the group's
                // resident memory (its page cache can be reclaimed).
                let in_cgroup = sys
                    .cgroup_limits()
                    .filter(|c| c.total_memory < sys.total_memory())
                    .map(|c| c.total_memory.saturating_sub(c.rss));
                Ok(match in_cgroup {
                    Some(headroom) if headroom < available => Self {
                        bytes: headroom,
                        source: "the container's memory limit".into(),
                    },
                    _ => Self {
                        bytes: available,
                        source: "available RAM".into(),
                    },
                })
            }
            DeviceChoice::Cuda(_) => cuda_free(device),
        }
    }
}

#[cfg(feature = "cuda")]
pub(crate) fn cuda_free(device: DeviceChoice) -> Result<MemoryBudget, FluxError> {
    let opened = device.open()?;
    let cuda = opened
        .as_cuda_device()
        .map_err(|e| FluxError::Device(format!("{device}: {e}")))?;
    let (free, _total) = cuda
        .cuda_stream()
        .context()
        .mem_get_info()
        .map_err(|e| FluxError::Device(format!("{device}: cannot read free memory: {e}")))?;
    Ok(MemoryBudget {
        bytes: free as u64,
        source: format!("free memory on {device}"),
    })
}

#[cfg(not(feature = "cuda"))]
pub(crate) fn cuda_free(device: DeviceChoice) -> Result<MemoryBudget, FluxError> {
    // Says how to build with CUDA.
    device.open().map(|_| unreachable!("no CUDA in this build"))
}

pub(crate) fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / GB)
}

/// `--quant auto`: full precision if it fits, else the largest GGUF type
/// that does. T5's type is `t5` if given, else the nearest to the
/// transformer's.
pub fn choose(
    size: &ModelSize,
    work: &Workload,
    budget: &MemoryBudget,
    t5: Option<T5Quant>,
) -> Result<QuantPlan, FluxError> {
    let t5_for = |q: Quant| t5.unwrap_or_else(|| T5Quant::nearest(q));
    let at = format!("at {}×{}", work.width, work.height);
    let mode = if work.low_memory { ", low-memory" } else { "" };
    let candidates = Quant::all();
    let mut larger: Option<(Quant, u64)> = None;
    for quant in candidates {
        let need = estimate_peak(size, (quant, t5_for(quant)), work);
        if need <= budget.bytes {
            let beaten = larger
                .map(|(q, n)| format!("; {q} would need {}", gb(n)))
                .unwrap_or_default();
            return Ok(QuantPlan {
                transformer: quant,
                t5: t5_for(quant),
                reason: format!(
                    "auto: {quant} (T5 {}) needs about {} {at}{mode}, and {} has {}{beaten}",
                    t5_for(quant),
                    gb(need),
                    budget.source,
                    gb(budget.bytes)
                ),
            });
        }
        larger = Some((quant, need));
    }
    let (smallest, need) = larger.expect("candidates are not empty");
    let hint = if work.low_memory {
        " Try"
    } else {
        " Try --low-memory,"
    };
    Err(FluxError::Memory(format!(
        "no weights fit: even {smallest} needs about {} {at}{mode}, but {} has {}.{hint} a smaller image, or an explicit --quant",
        gb(need),
        budget.source,
        gb(budget.bytes)
    )))
}

/// An explicit choice, with its estimate for the record.
pub fn fixed(size: &ModelSize, work: &Workload, quant: Quant, t5: Option<T5Quant>) -> QuantPlan {
    let t5 = t5.unwrap_or_else(|| T5Quant::nearest(quant));
    let need = estimate_peak(size, (quant, t5), work);
    QuantPlan {
        transformer: quant,
        t5,
        reason: format!(
            "--quant {quant} (T5 {t5}) as asked; it needs about {} at {}×{}",
            gb(need),
            work.width,
            work.height
        ),
    }
}
