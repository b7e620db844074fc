#[path = "../../build/libtorch_link.rs"]
mod libtorch_link;

fn main() {
    libtorch_link::emit_link_args();
    println!("cargo:rustc-env=TEMPLAR_COMMIT={}", commit());
    let kind = if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        "cuda"
    } else {
        "cpu"
    };
    println!("cargo:rustc-env=TEMPLAR_BUILD_KIND={kind}");
    // `templar bench train --reference` runs PyTorch from the same wheel templar links.
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let path = std::path::PathBuf::from(libtorch);
        let path = path.canonicalize().unwrap_or(path);
        println!("cargo:rustc-env=TEMPLAR_LIBTORCH_DIR={}", path.display());
    }
}

/// The commit the binary is built from, for `templar --version`: `TEMPLAR_COMMIT` when set (a
/// build outside a checkout), else git's short hash, `-dirty` when tracked files differ from it;
/// `unknown` without either.
fn commit() -> String {
    use std::process::Command;
    println!("cargo:rerun-if-env-changed=TEMPLAR_COMMIT");
    if let Some(commit) = std::env::var_os("TEMPLAR_COMMIT") {
        return commit.to_string_lossy().into_owned();
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(hash) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    // A new commit, a checkout or a staged change builds the version anew.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for name in ["HEAD", "index", "packed-refs", "refs"] {
            println!("cargo:rerun-if-changed={dir}/{name}");
        }
    }
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|changes| !changes.is_empty());
    if dirty { format!("{hash}-dirty") } else { hash }
}
