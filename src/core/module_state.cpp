#include "drdm/core/module_state.h"

#include <c10/util/Exception.h>
#include <torch/csrc/autograd/grad_mode.h>

namespace drdm {

std::map<std::string, torch::Tensor> module_state(const torch::nn::Module& module) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    if (p.value().defined()) out.emplace(p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/true))
    if (b.value().defined()) out.emplace(b.key(), b.value());
  return out;
}

void load_module_state(torch::nn::Module& module,
                       const std::map<std::string, torch::Tensor>& state) {
  auto own = module_state(module);
  const auto& owner = module.name();
  // Everything is checked before anything is copied: a failed load leaves
  // the module as it was.
  for (const auto& [key, value] : own) {
    const auto it = state.find(key);
    TORCH_CHECK(it != state.end(), owner, ": missing key '", key, "'");
    TORCH_CHECK(it->second.defined(), owner, ": key '", key, "' holds an undefined tensor");
    TORCH_CHECK(it->second.sizes() == value.sizes(), owner, ": key '", key, "' has shape ",
                it->second.sizes(), ", expected ", value.sizes());
  }
  for (const auto& entry : state)
    TORCH_CHECK(own.count(entry.first) == 1, owner, ": unexpected key '", entry.first, "'");
  torch::NoGradGuard no_grad;
  for (auto& [key, value] : own) value.copy_(state.at(key));
}

int64_t parameter_count(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters(/*recurse=*/true))
    if (p.defined() && p.requires_grad()) n += p.numel();
  return n;
}

}  // namespace drdm
