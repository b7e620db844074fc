//! The shim's C ABI (`cpp/dist.cpp`). Handles are opaque; every call reports through a
//! [`Status`] whose message, when set, is the shim's `malloc` and must go back through
//! [`tdist_free`].

use std::ffi::{c_char, c_void};

#[repr(C)]
pub(crate) struct Status {
    pub kind: i32,
    pub message: *mut c_char,
}

impl Status {
    pub(crate) fn new() -> Status {
        Status {
            kind: 0,
            message: std::ptr::null_mut(),
        }
    }
}

unsafe extern "C" {
    pub(crate) fn tdist_free(p: *mut c_void);

    pub(crate) fn tdist_store_file(
        path: *const c_char,
        timeout_ms: i64,
        status: *mut Status,
    ) -> *mut c_void;
    pub(crate) fn tdist_store_tcp(
        host: *const c_char,
        port: u16,
        server: bool,
        timeout_ms: i64,
        status: *mut Status,
    ) -> *mut c_void;
    pub(crate) fn tdist_store_prefixed(
        store: *mut c_void,
        prefix: *const c_char,
        status: *mut Status,
    ) -> *mut c_void;
    pub(crate) fn tdist_store_port(store: *mut c_void) -> u16;
    pub(crate) fn tdist_store_drop(store: *mut c_void);
    pub(crate) fn tdist_store_set(
        store: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: usize,
        status: *mut Status,
    );
    pub(crate) fn tdist_store_get(
        store: *mut c_void,
        key: *const c_char,
        len: *mut usize,
        status: *mut Status,
    ) -> *mut u8;
    pub(crate) fn tdist_store_add(
        store: *mut c_void,
        key: *const c_char,
        delta: i64,
        status: *mut Status,
    ) -> i64;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tdist_store_compare_set(
        store: *mut c_void,
        key: *const c_char,
        expected: *const u8,
        expected_len: usize,
        desired: *const u8,
        desired_len: usize,
        len: *mut usize,
        status: *mut Status,
    ) -> *mut u8;
    pub(crate) fn tdist_store_check(
        store: *mut c_void,
        key: *const c_char,
        status: *mut Status,
    ) -> i32;

    pub(crate) fn tdist_group_gloo(
        store: *mut c_void,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        threads: i32,
        status: *mut Status,
    ) -> *mut c_void;
    #[cfg(templar_nccl)]
    pub(crate) fn tdist_group_nccl(
        store: *mut c_void,
        rank: i32,
        world: i32,
        cuda_index: i32,
        timeout_ms: i64,
        status: *mut Status,
    ) -> *mut c_void;
    pub(crate) fn tdist_group_drop(group: *mut c_void);
    pub(crate) fn tdist_all_reduce(
        group: *mut c_void,
        tensor: *mut c_void,
        op: i32,
        status: *mut Status,
    );
    pub(crate) fn tdist_broadcast(
        group: *mut c_void,
        tensor: *mut c_void,
        root: i32,
        status: *mut Status,
    );
    pub(crate) fn tdist_all_gather(
        group: *mut c_void,
        out: *mut c_void,
        input: *mut c_void,
        status: *mut Status,
    );
    pub(crate) fn tdist_reduce_scatter(
        group: *mut c_void,
        out: *mut c_void,
        input: *mut c_void,
        op: i32,
        status: *mut Status,
    );
    pub(crate) fn tdist_barrier(group: *mut c_void, status: *mut Status);
}
