//! Compiles the C++ shim in `cpp/` against the libtorch that `scripts/setup` installs (the same
//! headers and libraries tch builds against) and links libtorch's c10d from `libtorch_cpu`.

#[path = "../../build/libtorch_link.rs"]
mod libtorch_link;

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=cpp");
    println!("cargo:rerun-if-changed=vendor");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        panic!(
            "LIBTORCH is not set; run scripts/setup (it installs torch and points .cargo/config.toml at it)"
        );
    };
    let libtorch = PathBuf::from(libtorch);
    let libtorch = libtorch.canonicalize().unwrap_or(libtorch);
    let include = libtorch.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .pic(true)
        // Only calls are forwarded here; the torch headers are heavy, so the 2-core CI is spared
        // the optimiser's and the debugger's work on them.
        .opt_level(1)
        .debug(false)
        .warnings(false)
        .flag("-w")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None)
        // The interface definitions libtorch_cpu was built with (Caffe2Targets.cmake): without
        // them ProcessGroupGloo.hpp is empty.
        .define("USE_DISTRIBUTED", None)
        .define("USE_C10D_GLOO", None)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        // Gloo's headers are not in the wheel; ProcessGroupGloo.hpp only names its types.
        .include("vendor")
        .file("cpp/dist.cpp");
    println!("cargo::rustc-check-cfg=cfg(templar_nccl)");
    // The NCCL group only with the `cuda` feature: a CPU build must not need libtorch_cuda.
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").map(|_| {
        nccl_includes(&libtorch).unwrap_or_else(|why| {
            panic!("the `cuda` feature needs CUDA's and NCCL's headers: {why}; run scripts/setup")
        })
    });
    if let Some(includes) = &cuda {
        build.define("USE_C10D_NCCL", None).file("cpp/nccl.cpp");
        for dir in includes {
            build.include(dir);
        }
    }
    build.compile("templar_dist");
    println!(
        "cargo:rustc-link-search=native={}",
        libtorch.join("lib").display()
    );
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if cuda.is_some() {
        println!("cargo:rustc-cfg=templar_nccl");
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    libtorch_link::emit_link_args();
}

/// The CUDA and NCCL header folders that the PyPI wheels of a CUDA libtorch bring
/// (`site-packages/nvidia/*/include`, beside `torch/`), plus CUDA's compiler headers that
/// scripts/setup installs; or why the NCCL group cannot be built.
fn nccl_includes(libtorch: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    if !libtorch.join("lib/libtorch_cuda.so").exists() {
        return Err(format!(
            "{} is not a CUDA build of libtorch",
            libtorch.display()
        ));
    }
    let site_packages = libtorch.parent().ok_or("libtorch has no parent folder")?;
    let nvidia = site_packages.join("nvidia");
    let mut includes: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .map_err(|e| format!("cannot read {}: {e}", nvidia.display()))?
        .filter_map(|entry| Some(entry.ok()?.path().join("include")))
        .filter(|dir| dir.is_dir())
        .collect();
    includes.sort();
    // CUDA's runtime wheel leaves out the compiler's `crt/` and `nv/` headers that its own
    // headers include: scripts/setup installs them beside the torch wheel.
    let cache = site_packages
        .parent()
        .ok_or("the torch wheel has no parent folder")?;
    let extra = cache.join("cuda-headers-13.0/nvidia/cu13/include");
    if !extra.is_dir() {
        return Err(format!(
            "CUDA's compiler headers are missing ({})",
            extra.display()
        ));
    }
    includes.push(extra);
    let has = |header: &str| includes.iter().any(|dir| dir.join(header).exists());
    if has("nccl.h") && has("cuda_runtime_api.h") && has("crt/host_config.h") && has("nv/target") {
        Ok(includes)
    } else {
        Err("nccl.h, cuda_runtime_api.h or CUDA's crt/ and nv/ headers are missing".into())
    }
}
