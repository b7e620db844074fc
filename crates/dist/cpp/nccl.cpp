// The NCCL process group, compiled only when the installed libtorch has CUDA (build.rs). NCCL
// is told which device is this rank's before anything runs on it. The launcher of the ranks sets
// TORCH_NCCL_BLOCKING_WAIT=1 and TORCH_NCCL_ASYNC_ERROR_HANDLING=2 so that a dead or stalled
// peer surfaces as an exception from wait() rather than a watchdog tearing the process down.

#include "shim.h"

#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

using namespace tdist;

extern "C" {

void* tdist_group_nccl(
    void* store,
    int32_t rank,
    int32_t world,
    int32_t cuda_index,
    int64_t timeout_ms,
    Status* status) {
  return guard(status, [&]() -> void* {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_index));
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = millis(timeout_ms);
    auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        static_cast<StoreHandle*>(store)->store, rank, world, options);
    return new GroupHandle{c10::static_intrusive_pointer_cast<c10d::Backend>(group)};
  });
}

}  // extern "C"
