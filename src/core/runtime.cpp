#include "drdm/core/runtime.h"

#include <cstdlib>  // defines __GLIBC__ on glibc systems; test it only after a libc header

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace drdm {

void keep_freed_memory_for_reuse() {
#if defined(__GLIBC__)
  constexpr int kOneGiB = 1 << 30;
  // Both are needed: the mmap threshold alone still trims the heap top, the
  // trim threshold alone still maps large buffers (measured).
  mallopt(M_MMAP_THRESHOLD, kOneGiB);
  mallopt(M_TRIM_THRESHOLD, kOneGiB);
#endif
}

}  // namespace drdm
