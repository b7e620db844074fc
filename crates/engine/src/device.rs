//! Device choice: CUDA when asked for or available, else CPU.

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

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device, EngineError> {
        match self {
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cpu => Ok(Device::Cpu),
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
