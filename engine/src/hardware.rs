//! What this machine can run models on.

use serde::{Deserialize, Serialize};

/// A GPU (or software renderer) as wgpu reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adapter {
    pub name: String,
    /// `Vulkan`, `Metal`, `Dx12`, `Gl`.
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu`, `Other`.
    pub device_type: String,
}

/// The hardware probe's findings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hardware {
    pub cpu: String,
    pub cpu_cores: usize,
    pub ram_total: u64,
    pub ram_available: u64,
    pub adapters: Vec<Adapter>,
    /// candle devices this build can run on and that work here: `cpu`, `cuda:N`, `metal`.
    pub candle_devices: Vec<String>,
}

/// Probes RAM, CPU, GPU adapters and usable candle devices.
pub fn probe() -> Hardware {
    let Ok(mut sys) = sysinfo::System::new() else {
        return Hardware { cpu: String::new(), cpu_cores: 0, ram_total: 0, ram_available: 0, adapters: adapters(), candle_devices: candle_devices() };
    };
    sys.refresh_memory();
    sys.refresh_cpu_all();
    let cpu = sys.cpus().first().map(|c| c.brand().trim().to_string()).unwrap_or_default();
    Hardware {
        cpu,
        cpu_cores: sys.cpus().len(),
        ram_total: sys.total_memory(),
        ram_available: sys.available_memory(),
        adapters: adapters(),
        candle_devices: candle_devices(),
    }
}

/// Bytes of memory available for a new model now.
/// `u64::MAX` when the platform does not say.
pub fn available_memory() -> u64 {
    match sysinfo::System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            sys.available_memory()
        }
        Err(_) => u64::MAX,
    }
}

fn adapters() -> Vec<Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let list = pollster_block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    list.into_iter()
        .map(|a| {
            let info = a.get_info();
            Adapter { name: info.name, backend: format!("{:?}", info.backend), device_type: format!("{:?}", info.device_type) }
        })
        .collect()
}

fn candle_devices() -> Vec<String> {
    #[allow(unused_mut)]
    let mut out = vec!["cpu".to_string()];
    #[cfg(feature = "cuda")]
    for i in 0..16 {
        if candle_core::Device::new_cuda(i).is_ok() {
            out.push(format!("cuda:{i}"));
        } else {
            break;
        }
    }
    #[cfg(feature = "metal")]
    if candle_core::Device::new_metal(0).is_ok() {
        out.push("metal".to_string());
    }
    out
}

/// Runs a future to completion on this thread (wgpu's enumeration is async
/// in signature but completes immediately on native backends).
fn pollster_block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime").block_on(fut)
}
