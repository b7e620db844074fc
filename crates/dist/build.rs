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
    cc::Build::new()
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
        .file("cpp/dist.cpp")
        .compile("templar_dist");
    println!(
        "cargo:rustc-link-search=native={}",
        libtorch.join("lib").display()
    );
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    libtorch_link::emit_link_args();
}
