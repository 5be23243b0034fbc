// Private: which program's run an output folder holds, so that one program
// never overwrites another's results (seg_fewshot run, reg_synth run).
#pragma once

#include <functional>
#include <string>

namespace drdm::detail {

/// The file in a run's output folder that names the program that made it.
inline constexpr const char* kRunKindFile = "run.json";

/// Throws std::runtime_error naming `folder` and the other program when
/// `folder` holds another program's run: its run.json names another program
/// or, in a folder from before run.json, its config.json (or the "config" of
/// its results.json) is not a config that `parse_config` accepts (without
/// `parse_config`, run.json alone tells). A missing, empty or new folder passes.
void require_run_kind(const std::string& folder, const std::string& program,
                      const std::function<void(const std::string& json_text)>& parse_config);

/// Writes folder/run.json naming `program` unless it is there already
/// (the writing rank only, like every write).
void record_run_kind(const std::string& folder, const std::string& program);

}  // namespace drdm::detail
