// What both translation units of the shim share: the status the C ABI reports through, the
// opaque handles, and `guard`, which turns every C++ exception into a status.

#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <c10/util/Exception.h>
#include <gloo/common/error.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/exception.h>

namespace tdist {


enum Kind : int32_t {
  kOk = 0,
  kStore = 1,
  kNetwork = 2,
  kBackend = 3,
  kTimeout = 4,
  kPeerLost = 5,
  kInvalid = 6,
  kTorch = 7,
  kOther = 8,
};

struct Status {
  int32_t kind;
  char* message;
};

struct StoreHandle {
  c10::intrusive_ptr<c10d::Store> store;
  uint16_t port;
};

struct GroupHandle {
  c10::intrusive_ptr<c10d::Backend> backend;
};

inline void fail(Status* status, Kind kind, const char* message) {
  status->kind = kind;
  status->message = strdup(message);
}

inline bool mentions_timeout(const char* message) {
  return std::strstr(message, "Timed out") != nullptr ||
      std::strstr(message, "timed out") != nullptr ||
      std::strstr(message, "Timeout") != nullptr ||
      std::strstr(message, "timeout") != nullptr;
}

// Runs `body`, turning any exception into `status`. The order matters: the most specific types
// first (c10d's timeout is a network error, which is a c10::Error).
template <typename Body>
auto guard(Status* status, Body body) -> decltype(body()) {
  status->kind = kOk;
  status->message = nullptr;
  try {
    return body();
  } catch (const c10d::TimeoutError& e) {
    fail(status, kTimeout, e.what_without_backtrace());
  } catch (const c10::DistStoreError& e) {
    const char* m = e.what_without_backtrace();
    fail(status, mentions_timeout(m) ? kTimeout : kStore, m);
  } catch (const c10::DistNetworkError& e) {
    fail(status, kNetwork, e.what_without_backtrace());
  } catch (const c10::DistBackendError& e) {
    fail(status, kBackend, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    const char* m = e.what_without_backtrace();
    fail(status, mentions_timeout(m) ? kTimeout : kTorch, m);
  } catch (const ::gloo::IoException& e) {
    // Gloo reports a peer that closed its sockets and one that stopped answering the same way.
    fail(status, mentions_timeout(e.what()) ? kTimeout : kPeerLost, e.what());
  } catch (const ::gloo::Exception& e) {
    fail(status, kBackend, e.what());
  } catch (const std::invalid_argument& e) {
    fail(status, kInvalid, e.what());
  } catch (const std::exception& e) {
    fail(status, mentions_timeout(e.what()) ? kTimeout : kOther, e.what());
  } catch (...) {
    fail(status, kOther, "an unknown C++ exception");
  }
  return decltype(body())();
}

inline std::chrono::milliseconds millis(int64_t ms) {
  return std::chrono::milliseconds(ms);
}

inline at::Tensor& tensor(void* raw) {
  at::Tensor& t = *static_cast<at::Tensor*>(raw);
  // Gloo and NCCL read raw data pointers: a strided view would be read as if it were dense.
  if (!t.defined() || t.is_sparse() || !t.is_contiguous()) {
    throw std::invalid_argument("collectives take dense, contiguous tensors");
  }
  return t;
}

inline void wait(const c10::intrusive_ptr<c10d::Work>& work) {
  // No client-side deadline: the group's timeout bounds every collective.
  work->wait();
}

inline uint8_t* copy_out(const std::vector<uint8_t>& bytes, size_t* len) {
  *len = bytes.size();
  auto* out = static_cast<uint8_t*>(std::malloc(bytes.empty() ? 1 : bytes.size()));
  if (out == nullptr) {
    throw std::bad_alloc();
  }
  if (!bytes.empty()) {
    std::memcpy(out, bytes.data(), bytes.size());
  }
  return out;
}

inline c10d::ReduceOp reduce_op(int32_t op) {
  switch (op) {
    case 0:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case 1:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case 2:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    default:
      throw std::invalid_argument("unknown reduction");
  }
}

}  // namespace tdist
