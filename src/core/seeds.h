// Private: seeds derived from (seed, step, ...), so that random streams need no saved state.
#pragma once

#include <cstdint>

namespace drdm::detail {

/// SplitMix64's output function: a bijective, well-mixing 64-bit hash.
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace drdm::detail
