//! Choosing the compute device.
//!
//! GPU backends are compiled only with the `cuda` or `metal` cargo features; without them the
//! request for such a device is a clear error rather than a silent fallback.

use candle_core::Device;

use crate::error::{EngineError, Result};

/// What the user asked for on the command line (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The best compiled-in accelerator that is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
    Metal,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "metal" => Ok(Self::Metal),
            other => Err(format!("unknown device '{other}': expected auto, cpu, cuda or metal")),
        }
    }
}

impl DeviceChoice {
    /// Resolves the choice into a candle device.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => {
                if candle_core::utils::cuda_is_available() {
                    Self::Cuda.open()
                } else if candle_core::utils::metal_is_available() {
                    Self::Metal.open()
                } else {
                    Ok(Device::Cpu)
                }
            }
            Self::Cuda => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(unavailable("cuda", "this build has no `cuda` feature or no CUDA device"));
                }
                Device::new_cuda(0).map_err(|error| unavailable("cuda", &error.to_string()))
            }
            Self::Metal => {
                if !candle_core::utils::metal_is_available() {
                    return Err(unavailable("metal", "this build has no `metal` feature or no Metal device"));
                }
                Device::new_metal(0).map_err(|error| unavailable("metal", &error.to_string()))
            }
        }
    }
}

/// A short human name for a device, for the UI and logs.
pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

fn unavailable(requested: &str, reason: &str) -> EngineError {
    EngineError::DeviceUnavailable { requested: requested.to_string(), reason: reason.to_string() }
}
