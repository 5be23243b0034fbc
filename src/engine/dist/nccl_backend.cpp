// The one translation unit that includes ProcessGroupNCCL.hpp. Its Options
// embed ncclConfig_t by value, so nccl.h must be the NCCL the wheel was built
// with (torch 2.11.0+cu130: NCCL 2.28); CMake compiles this unit only when
// that nccl.h is found (DRDM_WITH_NCCL).
#include <stdexcept>

#include "backends.h"

#ifdef DRDM_WITH_NCCL
#include <nccl.h>

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
static_assert(NCCL_MAJOR == 2 && NCCL_MINOR == 28, "nccl.h must be the wheel's NCCL 2.28");
#endif

namespace drdm::dist::detail {

#ifdef DRDM_WITH_NCCL
bool have_nccl() { return true; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int size,
                                                    std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
}
#else
bool have_nccl() { return false; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>&, int,
                                                    int, std::chrono::milliseconds) {
  throw std::runtime_error(
      "this libdrdm was built without NCCL (no nccl.h 2.28 found at build time); use backend gloo, "
      "see docs/install.md");
}
#endif

}  // namespace drdm::dist::detail
