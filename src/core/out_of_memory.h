// Private: an allocation failure named by what was being done, not LibTorch's bare allocator text.
#pragma once

#include <c10/util/Exception.h>

#include <new>
#include <stdexcept>
#include <string>

namespace drdm::detail {

/// True for LibTorch's allocation failures ("DefaultCPUAllocator: can't allocate memory", CUDA's
/// out-of-memory error).
inline bool is_out_of_memory(const c10::Error& e) {
  const std::string m = e.what_without_backtrace();
  return dynamic_cast<const c10::OutOfMemoryError*>(&e) ||
         m.find("can't allocate memory") != std::string::npos;
}

/// Runs `work`; an allocation failure in it becomes std::runtime_error("out of memory while
/// <what>"), with LibTorch's first line when it has one.
template <typename Fn>
decltype(auto) naming_out_of_memory(const std::string& what, Fn&& work) {
  try {
    return work();
  } catch (const std::bad_alloc&) {
    throw std::runtime_error("out of memory while " + what);
  } catch (const c10::Error& e) {
    if (!is_out_of_memory(e)) throw;
    const std::string m = e.what_without_backtrace();
    throw std::runtime_error("out of memory while " + what + " (" + m.substr(0, m.find('\n')) +
                             ")");
  }
}

}  // namespace drdm::detail
