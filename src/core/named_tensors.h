// Private: strict copying of named weights into a network, and counting its
// parameters; shared by RecoveryNet, seg::UNet and reg::VoxelMorph.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

namespace drdm::detail {

/// Copies `from` into `into` (the network's own tensors, aliased) after
/// checking that both have exactly the same keys and shapes; an error
/// (c10::Error) starts with `owner` and names the missing, unexpected or
/// mismatched key.
void load_named_strict(std::map<std::string, torch::Tensor>& into,
                       const std::map<std::string, torch::Tensor>& from, const std::string& owner);

/// The total number of elements of `tensors`.
int64_t element_count(const std::vector<torch::Tensor>& tensors);

}  // namespace drdm::detail
