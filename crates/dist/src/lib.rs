//! One node over many ranks. This crate binds libtorch's distributed runtime, c10d — the engine
//! under PyTorch's DDP and FSDP — through a small C++ shim (`cpp/dist.cpp`): rendezvous stores
//! ([`Store`]), Gloo and NCCL process groups ([`ProcessGroup`]) and its collectives on tch tensors, and
//! a rendezvous ([`rendezvous`]) that refuses ranks that do not belong together before any
//! collective runs. Every C++ exception comes back as a typed [`DistError`].

mod bytes;
mod error;
mod ffi;
mod group;
mod rendezvous;
mod store;

pub use error::{DistError, Result};
pub use group::{GroupOptions, ProcessGroup, ReduceOp};
pub use rendezvous::{Member, check_members, rendezvous};
pub use store::Store;

use std::ffi::{CStr, CString};

/// Whether this build has the NCCL process group ([`ProcessGroup::nccl`]): it was built against a
/// CUDA libtorch with CUDA's and NCCL's headers at hand.
pub const NCCL: bool = cfg!(templar_nccl);

/// The error a shim call reported, if any (and frees its message).
fn check(status: ffi::Status) -> Result<()> {
    if status.kind == 0 {
        return Ok(());
    }
    let message = if status.message.is_null() {
        "no message".to_string()
    } else {
        // SAFETY: a set message is a NUL-terminated string the shim allocated with malloc, read
        // once and freed once here.
        let text = unsafe { CStr::from_ptr(status.message) }
            .to_string_lossy()
            .into_owned();
        unsafe { ffi::tdist_free(status.message.cast()) };
        text
    };
    Err(match status.kind {
        1 => DistError::Store(message),
        2 => DistError::Network(message),
        3 => DistError::Backend(message),
        4 => DistError::Timeout(message),
        5 => DistError::PeerLost(message),
        6 => DistError::Invalid(message),
        7 => DistError::Torch(message),
        _ => DistError::Other(message),
    })
}

fn c_string(what: &str, text: &str) -> Result<CString> {
    CString::new(text).map_err(|_| DistError::Invalid(format!("{what} {text:?} holds a NUL byte")))
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}
