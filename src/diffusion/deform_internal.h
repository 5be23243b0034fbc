// Private: what the parts of drdm_deform's job share (deform_config.cpp,
// deform_discovery.cpp, deform_splits.cpp, deform_writers.cpp,
// deform_manifest.cpp, deform_job.cpp). The API is drdm/diffusion/deform_job.h.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "drdm/diffusion/deform_job.h"

namespace drdm::detail::deform {

using nlohmann::json;

// --- deform_config.cpp: options, config files and their JSON ---------------

/// "30,45:60": the levels as --levels takes them.
std::string levels_text(const std::vector<DeformLevel>& levels);
/// The whole file; throws std::runtime_error naming it when it cannot be read.
std::string read_text(const std::string& path);
/// A JSON file (duplicate keys refused); throws std::runtime_error naming it.
json parse_json_file(const std::string& path);
/// The checks on options that need neither the model nor the data.
void check_job_options(const DeformJobOptions& o);

}  // namespace drdm::detail::deform
