// Private: checks of input files that seg_fewshot, reg_synth and drdm_deform make before any work.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace drdm::detail {

/// `text` with every byte outside printable ASCII written as \xNN (for messages).
std::string escaped(const std::string& text);

/// Throws std::invalid_argument "<what> is not valid UTF-8" unless `text` is
/// valid UTF-8 (`what` names the file, e.g. with escaped(path)): the JSON
/// records (manifests, results) hold names as UTF-8, and nlohmann::json
/// refuses anything else only when it writes, after all the work.
void require_utf8(const std::string& text, const std::string& what);

/// Throws std::runtime_error naming `path` and the first value outside
/// 0..max_label of `labels` (integers); `rule` says where max_label comes
/// from, e.g. "data.classes names 3 classes".
void require_label_range(const at::Tensor& labels, int64_t max_label, const std::string& path,
                         const std::string& rule);

/// Throws std::runtime_error naming `path` when it is a symbolic link whose
/// target does not exist (a listing would otherwise drop it silently).
void require_not_dangling(const std::string& path);

}  // namespace drdm::detail
