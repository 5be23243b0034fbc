// Private: the files of a synthetic bank (seg_fewshot's DRDM bank, reg_synth's pair banks):
// DIR/bank.pt and DIR/manifest.json, published as one unit with the manifest last.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace drdm::detail {

/// True when `dir` holds a published bank: bank.pt and a manifest.json whose "identity" is
/// `identity`. A bank.pt without its manifest (a run stopped between the two writes) or with
/// another one is logged, naming `what`, and is to be rebuilt.
bool bank_published(const std::string& dir, const nlohmann::json& identity,
                    const std::string& what);

/// Publishes a bank: removes DIR/manifest.json, calls save(DIR/bank.pt) (an atomic write),
/// then writes `record` to DIR/manifest.json. Until the manifest is there the bank is not
/// published, so an interruption anywhere leaves a bank that the next run rebuilds.
void publish_bank(const std::string& dir, const nlohmann::json& record,
                  const std::function<void(const std::string& bank_path)>& save);

}  // namespace drdm::detail
