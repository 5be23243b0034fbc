// Tests for drdm/core/runtime.h. Each test runs in its own process (CTest), so the
// allocator starts from glibc's defaults in every one.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "drdm/core/runtime.h"

// glibc's allocator settings cannot be observed under AddressSanitizer, whose
// allocator replaces glibc's malloc (scripts/test.sh --sanitize).
#if defined(__SANITIZE_ADDRESS__)
#define DRDM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DRDM_ASAN 1
#endif
#endif

#if defined(__GLIBC__) && !defined(DRDM_ASAN)
#include <malloc.h>

namespace {

constexpr size_t kBytes = size_t{8} << 20;  // a 2D batch-8 field is about this size

// Allocates, touches and frees one large buffer; returns the free bytes the
// heap keeps afterwards.
// The pointer escapes through a volatile, or the compiler would elide the
// whole malloc/memset/free sequence.
void* volatile g_sink = nullptr;

size_t free_heap_bytes_after_large_free() {
  void* p = std::malloc(kBytes);
  std::memset(p, 1, kBytes);
  g_sink = p;
  std::free(g_sink);
  return mallinfo2().fordblks;
}

TEST(Runtime, FreedLargeBuffersStayInTheProcess) {
  drdm::keep_freed_memory_for_reuse();
  EXPECT_GE(free_heap_bytes_after_large_free(), kBytes);
}

// Control: glibc's default maps such a buffer and unmaps it on free, which is
// what made every tensor operation page-fault its output in again.
TEST(Runtime, GlibcDefaultReturnsLargeBuffers) {
  EXPECT_LT(free_heap_bytes_after_large_free(), kBytes);
}

}  // namespace
#endif
