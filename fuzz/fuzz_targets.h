// Fuzz targets shared by the libFuzzer entry point (libfuzzer_main.cpp, built
// with clang by fuzz/libfuzzer.sh) and the plain replay/mutation driver
// (replay_main.cpp, built with the project and run by ctest).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace drdm::fuzz {

/// The target names: "config", "nii", "niigz", "gz", "mha", "nrrd".
const std::vector<std::string>& target_names();

/// Runs one input through `target`. Returns normally when the code under test
/// accepted the input or refused it the documented way (std::invalid_argument
/// or std::runtime_error naming the file or config source); prints the input's
/// problem and calls abort() otherwise, so that both drivers report it.
void run_target(const std::string& target, const uint8_t* data, size_t size);

}  // namespace drdm::fuzz
