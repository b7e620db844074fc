//! c10d's key-value stores: where ranks find each other before a process group exists.

use std::ffi::c_void;
use std::path::Path;
use std::ptr::NonNull;
use std::time::Duration;

use crate::{Result, c_string, check, ffi, millis};

/// A c10d store: a file shared by the ranks of one machine ([`Store::file`]) or a TCP server
/// and its clients ([`Store::tcp_server`], [`Store::tcp_client`]). Every blocking read waits at
/// most the store's timeout.
pub struct Store {
    raw: NonNull<c_void>,
}

// SAFETY: c10d's stores serialise their operations internally (FileStore under a lock on the
// file, TCPStore over its own connection), so a handle may move between and be shared by threads.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// A store in the file at `path`, created if missing. Ranks on one machine that open the same
    /// path share it. The caller removes the file (it should live in a folder of its own).
    pub fn file(path: &Path, timeout: Duration) -> Result<Store> {
        // c10d retries opening the file for minutes before it gives up on a missing folder.
        if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty())
            && !folder.is_dir()
        {
            return Err(crate::DistError::Invalid(format!(
                "the store's folder {} does not exist: create it (every rank of the node opens \
                 the same file in it)",
                folder.display()
            )));
        }
        let path = c_string("the store's path", &path.to_string_lossy())?;
        let mut status = ffi::Status::new();
        // SAFETY: the path is a valid C string for the call; status is written by the shim.
        let raw = unsafe { ffi::tdist_store_file(path.as_ptr(), millis(timeout), &mut status) };
        Self::wrap(raw, status)
    }

    /// A TCP store served from this process on `port` (0: any free port, see [`Store::port`]).
    pub fn tcp_server(port: u16, timeout: Duration) -> Result<Store> {
        // c10d has no bind address: the server listens on every interface; its own client
        // connects over loopback.
        Self::tcp("127.0.0.1", port, true, timeout)
    }

    /// A client of the TCP store served at `host:port`.
    pub fn tcp_client(host: &str, port: u16, timeout: Duration) -> Result<Store> {
        Self::tcp(host, port, false, timeout)
    }

    fn tcp(host: &str, port: u16, server: bool, timeout: Duration) -> Result<Store> {
        let host = c_string("the store's host", host)?;
        let mut status = ffi::Status::new();
        // SAFETY: as in `file`.
        let raw = unsafe {
            ffi::tdist_store_tcp(host.as_ptr(), port, server, millis(timeout), &mut status)
        };
        Self::wrap(raw, status)
    }

    fn wrap(raw: *mut c_void, status: ffi::Status) -> Result<Store> {
        check(status)?;
        let raw = NonNull::new(raw).ok_or_else(|| {
            crate::DistError::Store("the shim returned no store and no error".into())
        })?;
        Ok(Store { raw })
    }

    /// A view of this store whose keys all live under `prefix/`: a group, a rendezvous or a
    /// generation of the node (after a restart) gets its own keys in one shared store. The view
    /// keeps the store alive; it reports the same port.
    pub fn prefixed(&self, prefix: &str) -> Result<Store> {
        let prefix = c_string("the store prefix", prefix)?;
        let mut status = ffi::Status::new();
        // SAFETY: a live handle and a NUL-terminated prefix; the view holds its own reference
        // to the store.
        let raw =
            unsafe { ffi::tdist_store_prefixed(self.raw.as_ptr(), prefix.as_ptr(), &mut status) };
        Self::wrap(raw, status)
    }

    /// The TCP port a server store listens on; `None` for a file store.
    pub fn port(&self) -> Option<u16> {
        // SAFETY: a live handle.
        let port = unsafe { ffi::tdist_store_port(self.raw.as_ptr()) };
        (port != 0).then_some(port)
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let key = c_string("a store key", key)?;
        let mut status = ffi::Status::new();
        // SAFETY: a live handle; key and value outlive the call.
        unsafe {
            ffi::tdist_store_set(
                self.raw.as_ptr(),
                key.as_ptr(),
                value.as_ptr(),
                value.len(),
                &mut status,
            )
        };
        check(status)
    }

    /// The value of `key`, waiting up to the store's timeout for it to be set.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let key = c_string("a store key", key)?;
        let (mut status, mut len) = (ffi::Status::new(), 0usize);
        // SAFETY: a live handle; the returned buffer is the shim's malloc of `len` bytes.
        let bytes =
            unsafe { ffi::tdist_store_get(self.raw.as_ptr(), key.as_ptr(), &mut len, &mut status) };
        check(status)?;
        Ok(take_bytes(bytes, len))
    }

    /// Adds `delta` to the counter at `key` (0 when new) and returns the sum.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let key = c_string("a store key", key)?;
        let mut status = ffi::Status::new();
        // SAFETY: a live handle.
        let value =
            unsafe { ffi::tdist_store_add(self.raw.as_ptr(), key.as_ptr(), delta, &mut status) };
        check(status)?;
        Ok(value)
    }

    /// Sets `key` to `desired` if it holds `expected` (or is missing and `expected` is empty),
    /// and returns what it holds afterwards: `desired` when this call won.
    pub fn compare_set(&self, key: &str, expected: &[u8], desired: &[u8]) -> Result<Vec<u8>> {
        let key = c_string("a store key", key)?;
        let (mut status, mut len) = (ffi::Status::new(), 0usize);
        // SAFETY: a live handle; the slices outlive the call; the result is the shim's malloc.
        let bytes = unsafe {
            ffi::tdist_store_compare_set(
                self.raw.as_ptr(),
                key.as_ptr(),
                expected.as_ptr(),
                expected.len(),
                desired.as_ptr(),
                desired.len(),
                &mut len,
                &mut status,
            )
        };
        check(status)?;
        Ok(take_bytes(bytes, len))
    }

    /// Whether `key` is set, without waiting.
    pub fn contains(&self, key: &str) -> Result<bool> {
        let key = c_string("a store key", key)?;
        let mut status = ffi::Status::new();
        // SAFETY: a live handle.
        let found = unsafe { ffi::tdist_store_check(self.raw.as_ptr(), key.as_ptr(), &mut status) };
        check(status)?;
        Ok(found == 1)
    }

    pub(crate) fn raw(&self) -> *mut c_void {
        self.raw.as_ptr()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the handle is dropped once; a process group holds its own reference.
        unsafe { ffi::tdist_store_drop(self.raw.as_ptr()) };
    }
}

/// Copies and frees a buffer the shim allocated.
fn take_bytes(bytes: *mut u8, len: usize) -> Vec<u8> {
    if bytes.is_null() {
        return Vec::new();
    }
    // SAFETY: the shim returned `len` readable bytes from malloc, freed here once.
    let copy = unsafe { std::slice::from_raw_parts(bytes, len) }.to_vec();
    unsafe { ffi::tdist_free(bytes.cast()) };
    copy
}
