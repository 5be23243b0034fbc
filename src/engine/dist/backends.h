// The two doors to c10d's backends. Callers see c10d::Backend only, never a
// Gloo or NCCL type: gloo_backend.cpp is the one unit that includes
// ProcessGroupGloo.hpp (against our parse-only gloo_decl/ headers, see
// docs/install.md), nccl_backend.cpp the one that includes ProcessGroupNCCL.hpp.
#pragma once

#include <chrono>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace drdm::dist::detail {

/// c10d's Gloo backend over `store`: connects to every rank (blocks until all
/// have arrived or `timeout` passes, then throws); `timeout` is also each
/// collective's timeout.
c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int size,
                                                    std::chrono::milliseconds timeout);

/// True when this build has the NCCL backend (a CUDA LibTorch and nccl.h).
bool have_nccl();

/// c10d's NCCL backend (one GPU per process, the current CUDA device).
/// Throws std::runtime_error when !have_nccl().
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int size,
                                                    std::chrono::milliseconds timeout);

}  // namespace drdm::dist::detail
