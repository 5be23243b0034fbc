/// @file A module's named tensors as a map, strict loading of such a map and
/// its trainable size: how every network (RecoveryNet, seg::UNet,
/// reg::VoxelMorph) is saved, restored and counted.
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>

namespace drdm {

/// Every parameter and buffer of `module` and its submodules, keyed by
/// LibTorch's dotted names (the keys of a PyTorch state_dict, e.g.
/// "enc1.0.conv_in.weight", "time_table"). The tensors alias the module's own
/// storage; undefined (optional) ones are left out. These names are the keys
/// of every checkpoint and model.pt that libdrdm writes.
std::map<std::string, torch::Tensor> module_state(const torch::nn::Module& module);

/// Copies `state` into `module`'s parameters and buffers (values converted to
/// each tensor's device and dtype), without recording gradients. Strict: a
/// key of module_state(module) that `state` lacks, a key `state` has that the
/// module lacks, an undefined tensor or a shape mismatch is a c10::Error that
/// names the module and the key; nothing is changed then.
void load_module_state(torch::nn::Module& module,
                       const std::map<std::string, torch::Tensor>& state);

/// The number of trainable scalars of `module`: the elements of its
/// parameters that require a gradient (buffers are not counted).
int64_t parameter_count(const torch::nn::Module& module);

}  // namespace drdm
