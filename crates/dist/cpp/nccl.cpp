// The NCCL process group, compiled only when the installed libtorch has CUDA (build.rs). NCCL
// is told which device is this rank's before anything runs on it. The group is refused unless
// the process was started with TORCH_NCCL_BLOCKING_WAIT=1 and TORCH_NCCL_ASYNC_ERROR_HANDLING=2:
// without them a dead or stalled peer makes NCCL's watchdog end the process instead of wait()
// throwing. (Setting them here would race with libtorch's threads reading the environment.)

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
    const char* blocking = std::getenv("TORCH_NCCL_BLOCKING_WAIT");
    const char* handling = std::getenv("TORCH_NCCL_ASYNC_ERROR_HANDLING");
    if (blocking == nullptr || std::string(blocking) != "1" || handling == nullptr ||
        std::string(handling) != "2") {
      throw std::invalid_argument(
          "start NCCL ranks with TORCH_NCCL_BLOCKING_WAIT=1 and "
          "TORCH_NCCL_ASYNC_ERROR_HANDLING=2 (and TORCH_NCCL_ENABLE_MONITORING=0), so that a "
          "lost peer is an error rather than the end of the process");
    }
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_index));
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = millis(timeout_ms);
    auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        static_cast<StoreHandle*>(store)->store, rank, world, options);
    return new GroupHandle{c10::static_intrusive_pointer_cast<c10d::Backend>(group)};
  });
}

}  // extern "C"
