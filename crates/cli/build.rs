#[path = "../../build/libtorch_link.rs"]
mod libtorch_link;

fn main() {
    libtorch_link::emit_link_args();
    // `templar bench train --reference` runs PyTorch from the same wheel templar links.
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let path = std::path::PathBuf::from(libtorch);
        let path = path.canonicalize().unwrap_or(path);
        println!("cargo:rustc-env=TEMPLAR_LIBTORCH_DIR={}", path.display());
    }
}
