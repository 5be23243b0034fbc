#include "engine/run_kind.h"

#include <nlohmann/json.hpp>
#include <stdexcept>

#include "drdm/engine/training_engine.h"
#include "drdm/io/text_file.h"
#include "engine/config_json.h"
#include "io/files.h"

namespace drdm::detail {
namespace {

using nlohmann::json;

/// The program that run.json names ("" when it names none).
std::string program_in(const std::string& marker) {
  json j;
  try {
    j = json::parse(read_config_text(marker));
  } catch (const json::exception& e) {
    throw std::runtime_error("'" + marker + "' is not valid JSON (" + e.what() +
                             "): it should name the program whose run the folder holds");
  }
  const auto it = j.is_object() ? j.find("program") : j.end();
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

/// The config of a folder from before run.json: its config.json, or the
/// "config" of its results.json (reg_synth run writes no config.json there).
std::string earlier_config(const std::string& folder) {
  const auto config = join(folder, "config.json"), results = join(folder, "results.json");
  if (file_exists(config)) return read_config_text(config);
  if (!file_exists(results)) return "";
  try {
    const auto j = json::parse(read_config_text(results));
    return j.is_object() && j.contains("config") ? j["config"].dump() : "";
  } catch (const json::exception&) {
    return "";
  }
}

}  // namespace

void require_run_kind(const std::string& folder, const std::string& program,
                      const std::function<void(const std::string&)>& parse_config) {
  const auto refuse = [&](const std::string& holds) {
    throw std::runtime_error("output folder '" + folder + "' holds " + holds + ", not those of " +
                             program + ": refusing to write into it (they would be overwritten); " +
                             "choose another --output");
  };
  const auto marker = join(folder, kRunKindFile);
  if (file_exists(marker)) {
    const auto made_by = program_in(marker);
    if (made_by != program)
      refuse(made_by.empty() ? "the results of an unknown program ('" + marker + "')"
                             : "the results of " + made_by);
    return;
  }
  if (!parse_config) return;
  const auto text = earlier_config(folder);
  if (text.empty()) return;
  try {
    parse_config(text);
  } catch (const std::exception& e) {
    refuse("another program's results (its config is not one of " + program + ": " + e.what() +
           ")");
  }
}

void record_run_kind(const std::string& folder, const std::string& program) {
  const auto marker = join(folder, kRunKindFile);
  if (!file_exists(marker))
    write_text_atomically(marker, json{{"program", program}}.dump(1) + "\n");
}

}  // namespace drdm::detail
