//! `--device` and `--dtype`.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::flux::error::FluxError;

/// Where candle runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DeviceChoice {
    /// The CPU.
    #[default]
    Cpu,
    /// The CUDA GPU of this ordinal.
    Cuda(usize),
    /// The Metal GPU.
    Metal,
}

impl FromStr for DeviceChoice {
    type Err = FluxError;
    fn from_str(s: &str) -> Result<Self, FluxError> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "metal" => Ok(DeviceChoice::Metal),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    FluxError::Device(format!(
                        "unknown device {other:?}: use cpu, cuda:N or metal"
                    ))
                }),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Metal => f.write_str("metal"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device; a build without its feature says how to get one.
    pub fn open(self) -> Result<Device, FluxError> {
        let unavailable = |feature: &str| {
            FluxError::Device(format!(
                "{self} is not available: this build lacks the `{feature}` feature (cargo build --release --features {feature})"
            ))
        };
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(unavailable("cuda"));
                }
                Device::new_cuda(n).map_err(|e| FluxError::Device(format!("{self}: {e}")))
            }
            DeviceChoice::Metal => {
                if !candle_core::utils::metal_is_available() {
                    return Err(unavailable("metal"));
                }
                Device::new_metal(0).map_err(|e| FluxError::Device(format!("{self}: {e}")))
            }
        }
    }

    /// bf16 on GPUs, f32 on the CPU.
    pub fn default_dtype(self) -> DType {
        match self {
            DeviceChoice::Cpu => DType::F32,
            DeviceChoice::Cuda(_) | DeviceChoice::Metal => DType::BF16,
        }
    }
}

/// The back ends this build was compiled with, for `schnell --version`.
pub const COMPILED_BACKENDS: &str = if cfg!(feature = "cuda") && cfg!(feature = "metal") {
    "cpu, cuda, metal"
} else if cfg!(feature = "cuda") {
    "cpu, cuda"
} else if cfg!(feature = "metal") {
    "cpu, metal"
} else {
    "cpu"
};

/// One back end as `schnell devices` reports it.
#[derive(Clone, Debug)]
pub struct BackendReport {
    /// The back end's name (`cpu`, `cuda`, `metal`).
    pub backend: &'static str,
    /// Whether this build has it.
    pub compiled: bool,
    /// The devices seen, one line each, or why none could be listed.
    pub devices: Result<Vec<String>, String>,
}

impl fmt::Display for BackendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.compiled {
            let hint = match self.backend {
                "metal" => " (macOS only: cargo build --release --features metal)",
                _ => " (scripts/build-cuda.sh, or cargo build --release --features cuda)",
            };
            return write!(f, "{}: not compiled in{hint}", self.backend);
        }
        match &self.devices {
            Ok(devices) if devices.is_empty() => {
                write!(f, "{}: compiled in, no device", self.backend)
            }
            Ok(devices) => write!(
                f,
                "{}: compiled in\n  {}",
                self.backend,
                devices.join("\n  ")
            ),
            Err(e) => write!(f, "{}: compiled in, no device: {e}", self.backend),
        }
    }
}

/// Every back end, compiled in or not, with the devices it sees.
pub fn backend_reports() -> Vec<BackendReport> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    vec![
        BackendReport {
            backend: "cpu",
            compiled: true,
            devices: Ok(vec![format!(
                "cpu: {threads} threads, kernels: {} ({})",
                crate::flux::model::cpu_ops::cpu_kernels(),
                crate::flux::model::cpu_ops::quantized_kernels()
            )]),
        },
        BackendReport {
            backend: "cuda",
            compiled: cfg!(feature = "cuda"),
            devices: cuda_devices(),
        },
        BackendReport {
            backend: "metal",
            compiled: cfg!(feature = "metal"),
            devices: metal_devices(),
        },
    ]
}

#[cfg(feature = "cuda")]
fn cuda_devices() -> Result<Vec<String>, String> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    let count = CudaContext::device_count().map_err(|e| e.to_string())?;
    (0..count as usize)
        .map(|n| {
            let describe =
                || -> Result<String, candle_core::cuda_backend::cudarc::driver::DriverError> {
                    let context = CudaContext::new(n)?;
                    let (major, minor) = context.compute_capability()?;
                    let (free, total) = context.mem_get_info()?;
                    Ok(format!(
                    "cuda:{n}: {}, compute capability {major}.{minor}, {:.1} GB ({:.1} GB free)",
                    context.name()?,
                    total as f64 / 1e9,
                    free as f64 / 1e9
                ))
                };
            describe().map_err(|e| format!("cuda:{n}: {e}"))
        })
        .collect()
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices() -> Result<Vec<String>, String> {
    Ok(Vec::new())
}

#[cfg(feature = "metal")]
fn metal_devices() -> Result<Vec<String>, String> {
    Device::new_metal(0)
        .map(|_| vec!["metal: the system's default GPU".to_string()])
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "metal"))]
fn metal_devices() -> Result<Vec<String>, String> {
    Ok(Vec::new())
}

/// `bf16` or `f32`. `f16` is refused: FLUX's VAE overflows in it and gives
/// NaN or black images (candle #2481, diffusers #9096).
pub fn parse_dtype(s: &str) -> Result<DType, FluxError> {
    match s {
        "bf16" => Ok(DType::BF16),
        "f32" => Ok(DType::F32),
        "f16" => Err(FluxError::Dtype(
            "f16 is refused: FLUX's VAE overflows in f16 and gives NaN or black images; use bf16 or f32".into(),
        )),
        other => Err(FluxError::Dtype(format!("unknown dtype {other:?}: use bf16 or f32"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_refuses_f16() {
        assert_eq!(
            "cuda:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!(parse_dtype("f16").unwrap_err().to_string().contains("NaN"));
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert_eq!(DeviceChoice::Cpu.default_dtype(), DType::F32);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let err = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
