#include "core/named_tensors.h"

#include <c10/util/Exception.h>

namespace drdm::detail {

void load_named_strict(std::map<std::string, torch::Tensor>& into,
                       const std::map<std::string, torch::Tensor>& from, const std::string& owner) {
  for (const auto& [key, value] : into) {
    const auto it = from.find(key);
    TORCH_CHECK(it != from.end(), owner, ": missing key '", key, "'");
    TORCH_CHECK(it->second.defined(), owner, ": key '", key, "' holds an undefined tensor");
    TORCH_CHECK(it->second.sizes() == value.sizes(), owner, ": key '", key, "' has shape ", it->second.sizes(),
                ", expected ", value.sizes());
  }
  for (const auto& [key, value] : from) TORCH_CHECK(into.count(key) == 1, owner, ": unexpected key '", key, "'");
  torch::NoGradGuard no_grad;
  for (auto& [key, value] : into) value.copy_(from.at(key));
}

int64_t element_count(const std::vector<torch::Tensor>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel();
  return n;
}

}  // namespace drdm::detail
