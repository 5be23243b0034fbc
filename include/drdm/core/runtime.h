/// @file Process-wide settings for programs built on libdrdm.
#pragma once

namespace drdm {

/// Makes glibc malloc keep freed tensor buffers in the process for reuse
/// instead of returning them to the kernel after every operation (mmap
/// threshold and trim threshold raised to 1 GiB). Without it each LibTorch CPU
/// operation on a 0.25-4 MB tensor page-faults its output in again: a 2D
/// 256x256 batch-8 warp took ~2,000 page faults per call and ran 2x slower
/// than the same call from Python (docs/performance.md). Call once at
/// start-up, before the first tensor; the libdrdm programs do. Resident
/// memory then stays near its peak until exit. No-op without glibc.
void keep_freed_memory_for_reuse();

}  // namespace drdm
