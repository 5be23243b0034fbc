#include "diffusion/run_checks.h"

#include <climits>
#include <cstdlib>
#include <stdexcept>

#include "drdm/diffusion/inference.h"

namespace drdm::detail {
namespace {

/// `path` with links and "." / ".." resolved, for a path that may not exist
/// yet: its deepest existing ancestor resolved, the rest appended.
std::string resolved(const std::string& path) {
  std::string head = path.empty() ? "." : path, tail;
  while (true) {
    char buf[PATH_MAX];
    if (::realpath(head.c_str(), buf)) return std::string(buf) + tail;
    const auto slash = head.find_last_of('/');
    if (slash == std::string::npos) {
      tail = "/" + head + tail;
      head = ".";
    } else {
      tail = head.substr(slash) + tail;
      head = slash == 0 ? "/" : head.substr(0, slash);
    }
  }
}

}  // namespace

void require_levels_in_model(const std::string& model, const std::vector<int64_t>& levels,
                             const std::string& key) {
  const auto big_t = load_model(model).config.sampler.timesteps;
  for (const auto level : levels)
    if (level > big_t)
      throw std::invalid_argument(key + ": level " + std::to_string(level) +
                                  " is beyond the DRDM model '" + model +
                                  "', whose levels are [1, " + std::to_string(big_t) + "]");
}

void require_output_outside(const std::string& output,
                            const std::vector<std::pair<std::string, std::string>>& folders) {
  const auto out = resolved(output);
  for (const auto& [key, folder] : folders) {
    const auto data = resolved(folder);
    if (out == data || out.rfind(data + "/", 0) == 0)
      throw std::invalid_argument("the output folder '" + output + "' lies inside " + key + " '" +
                                  folder + "': a rerun would read the run's own files as data; " +
                                  "choose an output folder outside the data");
  }
}

}  // namespace drdm::detail
