//! A process group: the ranks of one node, and the collectives they run together.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::time::Duration;

use tch::{Device, Tensor};

use crate::{DistError, Result, Store, check, ffi, millis};

/// How a reduction combines the ranks' values. There is no mean: a sum divided by the world
/// size where the caller chooses keeps every rank's arithmetic identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

impl ReduceOp {
    fn code(self) -> i32 {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// How long building the group, and then each collective, may wait for the slowest rank
    /// before it fails with [`DistError::Timeout`]. c10d's default is 30 minutes; a node's
    /// should be well under a window.
    pub timeout: Duration,
    /// Gloo's worker threads (c10d's default is 2).
    pub threads: usize,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            timeout: Duration::from_secs(300),
            threads: 2,
        }
    }
}

/// The ranks of one node joined over c10d. Collectives block until every rank has taken part
/// and fail, rather than hang past the group's timeout, when one has died or stalled. Every rank
/// must call the same collectives in the same order with tensors of the same shape and kind.
pub struct ProcessGroup {
    raw: NonNull<c_void>,
    rank: usize,
    world: usize,
    /// Where this backend's tensors live: the CPU for Gloo, the rank's GPU for NCCL.
    device: Device,
}

// SAFETY: a c10d backend may be used from any thread, one collective at a time; `&mut self` on
// every collective keeps the calls of one handle in order.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the Gloo group of `world` ranks that meet in `store`, as `rank`: a full mesh of
    /// loopback connections, built once every rank has arrived (or failing after the timeout).
    pub fn gloo(store: &Store, rank: usize, world: usize, options: &GroupOptions) -> Result<Self> {
        if rank >= world {
            return Err(DistError::RankOutOfRange { rank, world });
        }
        let (rank_i32, world_i32) = (to_i32(rank, "rank")?, to_i32(world, "world size")?);
        let mut status = ffi::Status::new();
        // SAFETY: a live store handle; the group keeps its own reference to the store.
        let raw = unsafe {
            ffi::tdist_group_gloo(
                store.raw(),
                rank_i32,
                world_i32,
                millis(options.timeout),
                to_i32(options.threads, "thread count")?,
                &mut status,
            )
        };
        check(status)?;
        let raw = NonNull::new(raw)
            .ok_or_else(|| DistError::Backend("the shim returned no group and no error".into()))?;
        Ok(ProcessGroup {
            raw,
            rank,
            world,
            device: Device::Cpu,
        })
    }

    /// Joins the NCCL group of `world` ranks that meet in `store`, as `rank` on CUDA device
    /// `cuda_index` (made this thread's current device). Only in builds against a CUDA libtorch
    /// ([`crate::NCCL`]). For a dead or stalled peer to surface as an error rather than end the
    /// process, start the ranks with `TORCH_NCCL_BLOCKING_WAIT=1` and
    /// `TORCH_NCCL_ASYNC_ERROR_HANDLING=2`.
    #[cfg(templar_nccl)]
    pub fn nccl(
        store: &Store,
        rank: usize,
        world: usize,
        cuda_index: usize,
        options: &GroupOptions,
    ) -> Result<Self> {
        if rank >= world {
            return Err(DistError::RankOutOfRange { rank, world });
        }
        let mut status = ffi::Status::new();
        // SAFETY: a live store handle; the group keeps its own reference to the store.
        let raw = unsafe {
            ffi::tdist_group_nccl(
                store.raw(),
                to_i32(rank, "rank")?,
                to_i32(world, "world size")?,
                to_i32(cuda_index, "CUDA device")?,
                millis(options.timeout),
                &mut status,
            )
        };
        check(status)?;
        let raw = NonNull::new(raw)
            .ok_or_else(|| DistError::Backend("the shim returned no group and no error".into()))?;
        Ok(ProcessGroup {
            raw,
            rank,
            world,
            device: Device::Cuda(cuda_index),
        })
    }

    /// The group for tensors on `device`: NCCL on CUDA device `i` (this rank's GPU; builds with
    /// NCCL only, [`crate::NCCL`]), Gloo on the CPU.
    pub fn on_device(
        store: &Store,
        rank: usize,
        world: usize,
        device: Device,
        options: &GroupOptions,
    ) -> Result<Self> {
        match device {
            #[cfg(templar_nccl)]
            Device::Cuda(index) => Self::nccl(store, rank, world, index, options),
            #[cfg(not(templar_nccl))]
            Device::Cuda(_) => Err(DistError::Invalid(
                "this build has no NCCL (it was built without CUDA's headers; see docs/dist.md): \
                 run the ranks on the CPU, or build again after scripts/setup"
                    .into(),
            )),
            _ => Self::gloo(store, rank, world, options),
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Where the collectives' tensors must live: the CPU for Gloo, the rank's GPU for NCCL.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Every rank's `tensor` combined by `op`, in place on every rank.
    pub fn all_reduce(&mut self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        dense(tensor, "all_reduce")?;
        self.call(|group, status| unsafe {
            // SAFETY: live handles; the tensor is checked dense and outlives the call.
            ffi::tdist_all_reduce(group, tensor_ptr(tensor), op.code(), status)
        })
    }

    /// Rank `root`'s `tensor`, copied into every rank's.
    pub fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<()> {
        dense(tensor, "broadcast")?;
        if root >= self.world {
            return Err(DistError::RankOutOfRange {
                rank: root,
                world: self.world,
            });
        }
        let root = to_i32(root, "root")?;
        self.call(|group, status| unsafe {
            // SAFETY: as in `all_reduce`.
            ffi::tdist_broadcast(group, tensor_ptr(tensor), root, status)
        })
    }

    /// Every rank's `input`, concatenated in rank order into `output` (`world` times as many
    /// elements, same kind and device; both are taken flat, so shapes beyond the counts do not
    /// matter).
    pub fn all_gather(&mut self, output: &mut Tensor, input: &Tensor) -> Result<()> {
        self.check_pair(output, input, "all_gather", self.world, 1)?;
        self.call(|group, status| unsafe {
            // SAFETY: as in `all_reduce`; the shim only reads `input`.
            ffi::tdist_all_gather(group, tensor_ptr(output), tensor_ptr(input), status)
        })
    }

    /// `input` combined by `op` across ranks, of which this rank keeps its slice in rank order:
    /// `output` has a `world`-th of `input`'s elements (both taken flat).
    pub fn reduce_scatter(
        &mut self,
        output: &mut Tensor,
        input: &Tensor,
        op: ReduceOp,
    ) -> Result<()> {
        self.check_pair(output, input, "reduce_scatter", 1, self.world)?;
        self.call(|group, status| unsafe {
            // SAFETY: as in `all_gather`.
            ffi::tdist_reduce_scatter(
                group,
                tensor_ptr(output),
                tensor_ptr(input),
                op.code(),
                status,
            )
        })
    }

    /// Returns once every rank has reached it.
    pub fn barrier(&mut self) -> Result<()> {
        self.call(|group, status| unsafe {
            // SAFETY: a live handle.
            ffi::tdist_barrier(group, status)
        })
    }

    fn call(&mut self, run: impl FnOnce(*mut c_void, *mut ffi::Status)) -> Result<()> {
        let mut status = ffi::Status::new();
        run(self.raw.as_ptr(), &mut status);
        check(status)
    }

    /// Checks that `output` and `input` are alike and that `output` has `out_times / in_times`
    /// times as many elements.
    fn check_pair(
        &self,
        output: &Tensor,
        input: &Tensor,
        what: &str,
        out_times: usize,
        in_times: usize,
    ) -> Result<()> {
        dense(output, what)?;
        dense(input, what)?;
        if output.kind() != input.kind() || output.device() != input.device() {
            return Err(DistError::Invalid(format!(
                "{what}: the output is {:?} on {:?}, the input {:?} on {:?}",
                output.kind(),
                output.device(),
                input.kind(),
                input.device()
            )));
        }
        let (out, inp) = (output.numel(), input.numel());
        if out * in_times != inp * out_times {
            return Err(DistError::Invalid(format!(
                "{what} over {} ranks: an input of {inp} elements needs an output of {}, not {out}",
                self.world,
                inp * out_times / in_times
            )));
        }
        Ok(())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle is dropped once.
        unsafe { ffi::tdist_group_drop(self.raw.as_ptr()) };
    }
}

fn tensor_ptr(tensor: &Tensor) -> *mut c_void {
    tensor.as_ptr() as *mut c_void
}

/// c10d reads raw data pointers: a strided view would be read as if it were dense.
fn dense(tensor: &Tensor, what: &str) -> Result<()> {
    if !tensor.defined() || !tensor.is_contiguous() {
        return Err(DistError::Invalid(format!(
            "{what} takes defined, contiguous tensors (call .contiguous() first)"
        )));
    }
    if !matches!(tensor.device(), Device::Cpu | Device::Cuda(_)) {
        return Err(DistError::Invalid(format!(
            "{what}: tensors on {:?} are not supported",
            tensor.device()
        )));
    }
    Ok(())
}

fn to_i32(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| DistError::Invalid(format!("{what} {value} is too large")))
}
