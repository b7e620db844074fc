// Shared by the build scripts of crates whose artifacts link libtorch (included with #[path]).
//
// 1. Records libtorch's folder as the run-time search path, so `templar` and the tests run without
//    LD_LIBRARY_PATH.
// 2. With the crate's `cuda` feature, keeps libtorch_cuda linked: nothing references it by symbol,
//    so the linker's --as-needed would drop it and the binary would silently run on CPU. Without
//    the feature the binary needs libtorch's CPU libraries only (the CPU release package).

use std::path::PathBuf;

pub fn emit_link_args() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set; run scripts/setup (it installs torch and points .cargo/config.toml at it)"
        );
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if !lib.join("libtorch_cuda.so").exists() {
        panic!(
            "the `cuda` feature needs a CUDA build of libtorch, and {} has no libtorch_cuda.so; \
             install the PyPI torch wheel with scripts/setup, or build without `--features cuda`",
            lib.display()
        );
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
}
