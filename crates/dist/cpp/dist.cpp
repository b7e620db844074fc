// The C ABI over libtorch's c10d that crates/dist binds: rendezvous stores, a Gloo process group
// and its collectives. Every entry point catches everything: an exception must never unwind into
// Rust. Errors come back as a kind (see `Kind` in shim.h, mirrored in src/lib.rs) and a malloc'd message.

#include "shim.h"

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

using namespace tdist;

extern "C" {

void tdist_free(void* p) {
  std::free(p);
}

void* tdist_store_file(const char* path, int64_t timeout_ms, Status* status) {
  return guard(status, [&]() -> void* {
    // numWorkers -1: the file is never removed by the store itself (the count of workers would
    // be wrong as soon as one more handle opens it); its folder's owner removes it.
    auto store = c10::make_intrusive<c10d::FileStore>(path, -1);
    store->setTimeout(millis(timeout_ms));
    return new StoreHandle{store, 0};
  });
}

void* tdist_store_tcp(
    const char* host,
    uint16_t port,
    bool server,
    int64_t timeout_ms,
    Status* status) {
  return guard(status, [&]() -> void* {
    c10d::TCPStoreOptions options;
    options.port = port;
    options.isServer = server;
    options.waitWorkers = false;
    options.timeout = millis(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(host, options);
    uint16_t bound = store->getPort();
    return new StoreHandle{store, bound};
  });
}

void* tdist_store_prefixed(void* handle, const char* prefix, Status* status) {
  return guard(status, [&]() -> void* {
    auto* inner = static_cast<StoreHandle*>(handle);
    auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, inner->store);
    return new StoreHandle{store, inner->port};
  });
}

uint16_t tdist_store_port(void* handle) {
  return static_cast<StoreHandle*>(handle)->port;
}

void tdist_store_drop(void* handle) {
  delete static_cast<StoreHandle*>(handle);
}

void tdist_store_set(
    void* handle,
    const char* key,
    const uint8_t* data,
    size_t len,
    Status* status) {
  guard(status, [&]() -> int {
    std::vector<uint8_t> value(data, data + len);
    static_cast<StoreHandle*>(handle)->store->set(key, value);
    return 0;
  });
}

uint8_t* tdist_store_get(void* handle, const char* key, size_t* len, Status* status) {
  return guard(status, [&]() -> uint8_t* {
    return copy_out(static_cast<StoreHandle*>(handle)->store->get(key), len);
  });
}

int64_t tdist_store_add(void* handle, const char* key, int64_t delta, Status* status) {
  return guard(status, [&]() -> int64_t {
    return static_cast<StoreHandle*>(handle)->store->add(key, delta);
  });
}

uint8_t* tdist_store_compare_set(
    void* handle,
    const char* key,
    const uint8_t* expected,
    size_t expected_len,
    const uint8_t* desired,
    size_t desired_len,
    size_t* len,
    Status* status) {
  return guard(status, [&]() -> uint8_t* {
    std::vector<uint8_t> e(expected, expected + expected_len);
    std::vector<uint8_t> d(desired, desired + desired_len);
    return copy_out(static_cast<StoreHandle*>(handle)->store->compareSet(key, e, d), len);
  });
}

int32_t tdist_store_check(void* handle, const char* key, Status* status) {
  return guard(status, [&]() -> int32_t {
    return static_cast<StoreHandle*>(handle)->store->check({key}) ? 1 : 0;
  });
}

void* tdist_group_gloo(
    void* store,
    int32_t rank,
    int32_t world,
    int64_t timeout_ms,
    int32_t threads,
    Status* status) {
  return guard(status, [&]() -> void* {
    auto options = c10d::ProcessGroupGloo::Options::create(millis(timeout_ms));
    // One node's ranks share a host: loopback, never an interface picked by hostname lookup.
    options->devices.push_back(
        c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1", false));
    options->threads = threads > 0 ? threads : 2;
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        static_cast<StoreHandle*>(store)->store, rank, world, options);
    return new GroupHandle{c10::static_intrusive_pointer_cast<c10d::Backend>(group)};
  });
}

void tdist_group_drop(void* handle) {
  delete static_cast<GroupHandle*>(handle);
}

void tdist_all_reduce(void* group, void* raw, int32_t op, Status* status) {
  guard(status, [&]() -> int {
    std::vector<at::Tensor> tensors{tensor(raw)};
    c10d::AllreduceOptions options;
    options.reduceOp = reduce_op(op);
    wait(static_cast<GroupHandle*>(group)->backend->allreduce(tensors, options));
    return 0;
  });
}

void tdist_broadcast(void* group, void* raw, int32_t root, Status* status) {
  guard(status, [&]() -> int {
    std::vector<at::Tensor> tensors{tensor(raw)};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    wait(static_cast<GroupHandle*>(group)->backend->broadcast(tensors, options));
    return 0;
  });
}

void tdist_all_gather(void* group, void* out, void* in, Status* status) {
  guard(status, [&]() -> int {
    // Flat views: c10d checks the shapes of a gather or scatter with assertions that abort;
    // the caller has checked the element counts.
    at::Tensor flat_out = tensor(out).view({-1});
    at::Tensor flat_in = tensor(in).view({-1});
    wait(static_cast<GroupHandle*>(group)->backend->_allgather_base(
        flat_out, flat_in, c10d::AllgatherOptions()));
    return 0;
  });
}

void tdist_reduce_scatter(void* group, void* out, void* in, int32_t op, Status* status) {
  guard(status, [&]() -> int {
    c10d::ReduceScatterOptions options;
    options.reduceOp = reduce_op(op);
    // Gloo writes the output inside wait(): the work must always be waited for.
    at::Tensor flat_out = tensor(out).view({-1});
    at::Tensor flat_in = tensor(in).view({-1});
    wait(static_cast<GroupHandle*>(group)->backend->_reduce_scatter_base(
        flat_out, flat_in, options));
    return 0;
  });
}

void tdist_barrier(void* group, Status* status) {
  guard(status, [&]() -> int {
    wait(static_cast<GroupHandle*>(group)->backend->barrier(c10d::BarrierOptions()));
    return 0;
  });
}

}  // extern "C"
