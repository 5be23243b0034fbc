// The one translation unit that includes ProcessGroupGloo.hpp. It is compiled
// against gloo_decl/ (parse-only declarations of our own), so it can use only
// what libtorch_cpu exports and what depends on no Gloo object layout:
// Options::create_default, Options::threads, the ProcessGroupGloo constructor
// and the conversion to c10d::Backend. check_firewall.sh (run after the build)
// verifies that the object neither references nor defines a gloo:: symbol.
#include "backends.h"

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#ifndef DRDM_GLOO_DECL
#error "<gloo/...> must come from src/engine/dist/gloo_decl/ (see its README.md)"
#endif
#else
#include <stdexcept>
#endif

namespace drdm::dist::detail {

#ifndef USE_C10D_GLOO
c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>&, int,
                                                    int, std::chrono::milliseconds) {
  throw std::runtime_error(
      "this LibTorch was built without Gloo (USE_C10D_GLOO): no data-parallel training on "
      "the CPU; see docs/install.md");
}
#else

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int size,
                                                    std::chrono::milliseconds timeout) {
  // create_default picks the network interface as PyTorch does
  // (GLOO_SOCKET_IFNAME, else the host name's address, else loopback).
  auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
  options->threads = 2;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
}
#endif

}  // namespace drdm::dist::detail
