//! Device choice: CUDA when asked for or available, else CPU.

use std::path::Path;
use std::str::FromStr;

use tch::Device;

use crate::error::EngineError;

/// What the user asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first CUDA device if libtorch sees one, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    EngineError::Config(format!(
                        "unknown device {other:?}: use auto, cpu, cuda or cuda:N"
                    ))
                }),
        }
    }
}

/// Whether this build can train on CUDA (the `cuda` feature keeps libtorch_cuda linked).
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// What to do when a CPU-only build is asked for CUDA.
const CPU_BUILD_HINT: &str = "this templar was built without CUDA: build it with \
     `cargo build --release --features cuda`, or use the CUDA release package";

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device, EngineError> {
        match self {
            Self::Auto => {
                if !CUDA_BUILD && Path::new("/dev/nvidiactl").exists() {
                    tracing::warn!(
                        "this machine has an NVIDIA GPU; running on the CPU as {CPU_BUILD_HINT}"
                    );
                }
                Ok(Device::cuda_if_available())
            }
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(_) if !CUDA_BUILD => Err(EngineError::Config(format!(
                "--device cuda: {CPU_BUILD_HINT}"
            ))),
            Self::Cuda(index) => {
                let count = tch::Cuda::device_count() as usize;
                if index < count {
                    Ok(Device::Cuda(index))
                } else {
                    Err(EngineError::Config(format!(
                        "cuda:{index} requested but libtorch sees {count} CUDA device(s); check the driver, or use --device cpu"
                    )))
                }
            }
        }
    }
}

/// A short description of `device` for logs and reports.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

/// Sets libtorch's intra-op thread count for CPU work.
pub fn set_threads(threads: i32) {
    tch::set_num_threads(threads.max(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_unknown_ones_are_named() {
        assert_eq!(
            "auto".parse::<DeviceChoice>().ok(),
            Some(DeviceChoice::Auto)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().ok(),
            Some(DeviceChoice::Cuda(3))
        );
        let error = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(
            error.contains("\"tpu\"") && error.contains("cuda:N"),
            "{error}"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_asked_for_cuda_says_how_to_get_one() {
        let error = DeviceChoice::Cuda(0).resolve().unwrap_err().to_string();
        assert!(error.contains("--features cuda"), "{error}");
        assert_eq!(DeviceChoice::Cpu.resolve().ok(), Some(Device::Cpu));
    }
}
