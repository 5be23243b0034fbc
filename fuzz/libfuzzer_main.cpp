// libFuzzer entry point; the target comes from DRDM_FUZZ_TARGET (see
// fuzz/libfuzzer.sh, which builds this with clang -fsanitize=fuzzer,address).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "fuzz_targets.h"

namespace {
std::string target;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* t = std::getenv("DRDM_FUZZ_TARGET");
  if (!t) {
    std::fprintf(stderr, "set DRDM_FUZZ_TARGET to one of: config nii niigz gz mha nrrd\n");
    std::exit(2);
  }
  target = t;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  drdm::fuzz::run_target(target, data, size);
  return 0;
}

// GCC's -fsanitize-coverage=trace-cmp (image_io.cpp, see libfuzzer.sh) also
// traces floating-point comparisons, which libFuzzer has no hooks for.
extern "C" void __sanitizer_cov_trace_cmpf(float, float) {}
extern "C" void __sanitizer_cov_trace_cmpd(double, double) {}
