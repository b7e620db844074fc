// Shared by the build scripts of crates whose artifacts link libtorch (included with #[path]).
//
// 1. Records libtorch's folder as the run-time search path, so `templar` and the tests run without
//    LD_LIBRARY_PATH.
// 2. Keeps libtorch_cuda linked when the installed libtorch has it: nothing references it by symbol,
//    so the linker's --as-needed would drop it and the binary would silently run on CPU.

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
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
