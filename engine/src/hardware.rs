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

/// Bytes of memory this machine has (0 when the platform does not say).
pub fn total_memory() -> u64 {
    match sysinfo::System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            sys.total_memory()
        }
        Err(_) => 0,
    }
}

fn adapters() -> Vec<Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let list = pollster_block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    real_gpus(
        list.into_iter()
            .map(|a| {
                let info = a.get_info();
                Adapter { name: info.name, backend: format!("{:?}", info.backend), device_type: format!("{:?}", info.device_type) }
            })
            .collect(),
    )
}

/// The adapters that are GPUs: software rasterisers (Mesa's llvmpipe and
/// lavapipe, SwiftShader, Microsoft's WARP) run on the CPU the engine already
/// uses, so they are left out; a GPU that several backends report (Vulkan
/// and GL, say) is listed once, under the first.
fn real_gpus(all: Vec<Adapter>) -> Vec<Adapter> {
    const SOFTWARE: [&str; 5] = ["llvmpipe", "lavapipe", "softpipe", "swiftshader", "microsoft basic render"];
    let mut out: Vec<Adapter> = Vec::new();
    for a in all {
        let name = a.name.to_lowercase();
        let software = a.device_type == "Cpu" || SOFTWARE.iter().any(|s| name.contains(s));
        if !software && !out.iter().any(|o| o.name == a.name) {
            out.push(a);
        }
    }
    out
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

/// The device a setting names: `auto` (the first GPU this build can use,
/// else the CPU), `cpu`, `cuda` or `cuda:N`, `metal`.
///
/// # Errors
/// A name that is none of these, or a device this build or machine lacks,
/// with the devices that are there.
pub fn device_named(name: &str) -> std::result::Result<candle_core::Device, String> {
    let name = name.trim().to_lowercase();
    let usable = candle_devices();
    let open = |n: &str| -> std::result::Result<candle_core::Device, String> {
        if n == "cpu" {
            return Ok(candle_core::Device::Cpu);
        }
        if !usable.iter().any(|u| u == n) {
            let built =
                if cfg!(feature = "cuda") || cfg!(feature = "metal") { "" } else { " (this build has no GPU support: build with --features cuda or metal)" };
            return Err(format!("device {n:?} is not available here{built}; usable: {}", usable.join(", ")));
        }
        match n.split_once(':') {
            Some(("cuda", i)) => i.parse::<usize>().map_err(|e| e.to_string()).and_then(|i| candle_core::Device::new_cuda(i).map_err(|e| e.to_string())),
            _ if n == "metal" => candle_core::Device::new_metal(0).map_err(|e| e.to_string()),
            _ => Err(format!("unknown device {n:?}")),
        }
    };
    match name.as_str() {
        "" | "auto" => Ok(usable.iter().find(|d| *d != "cpu").and_then(|d| open(d).ok()).unwrap_or(candle_core::Device::Cpu)),
        "cuda" => open("cuda:0"),
        "cpu" | "metal" => open(&name),
        n if n.starts_with("cuda:") => open(n),
        n => Err(format!("unknown device {n:?}: use auto, cpu, cuda, cuda:N or metal")),
    }
}

/// Runs a future to completion on this thread (wgpu's enumeration is async
/// in signature but completes immediately on native backends).
fn pollster_block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime").block_on(fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(name: &str, backend: &str, device_type: &str) -> Adapter {
        Adapter { name: name.into(), backend: backend.into(), device_type: device_type.into() }
    }

    #[test]
    fn devices_are_named_as_users_write_them_and_unknown_ones_are_refused_with_the_list() {
        assert!(device_named("cpu").unwrap().is_cpu());
        assert!(device_named(" CPU ").unwrap().is_cpu());
        // `auto` picks a GPU where this build and machine have one.
        let auto = device_named("auto").unwrap();
        assert_eq!(auto.is_cpu(), candle_devices() == ["cpu"]);
        let err = device_named("tpu").unwrap_err();
        assert!(err.contains("tpu") && err.contains("cuda:N"), "{err}");
        if !candle_devices().iter().any(|d| d == "cuda:0") {
            let err = device_named("cuda").unwrap_err();
            assert!(err.contains("not available") && err.contains("usable: cpu"), "{err}");
        }
    }

    #[test]
    fn software_rasterisers_are_not_shown_as_gpus_and_each_gpu_is_listed_once() {
        let found = vec![
            adapter("llvmpipe (LLVM 15.0.6, 256 bits)", "Vulkan", "Cpu"),
            adapter("NVIDIA GeForce RTX 3060", "Vulkan", "DiscreteGpu"),
            adapter("Intel(R) UHD Graphics 770", "Vulkan", "IntegratedGpu"),
            adapter("llvmpipe (LLVM 15.0.6, 256 bits)", "Gl", "Other"),
            adapter("NVIDIA GeForce RTX 3060", "Gl", "Other"),
            adapter("SwiftShader Device (Subzero)", "Vulkan", "Cpu"),
            adapter("Microsoft Basic Render Driver", "Dx12", "Other"),
        ];
        let names: Vec<(String, String)> = real_gpus(found).into_iter().map(|a| (a.name, a.backend)).collect();
        assert_eq!(names, [("NVIDIA GeForce RTX 3060".to_string(), "Vulkan".to_string()), ("Intel(R) UHD Graphics 770".to_string(), "Vulkan".to_string())]);
    }
}
