// drdm_deform's options: the mode and level names, --shard, config files and
// the options' JSON (config.json, the manifest's "options").
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "core/parse_integer.h"
#include "diffusion/deform_internal.h"
#include "drdm/core/log.h"
#include "engine/config_keys.h"

namespace drdm {

using nlohmann::json;

std::string to_string(DeformMode mode) {
  switch (mode) {
    case DeformMode::kAugment:
      return "augment";
    case DeformMode::kPairs:
      return "pairs";
    default:
      return "deform";
  }
}

DeformMode parse_deform_mode(const std::string& name) {
  if (name == "deform") return DeformMode::kDeform;
  if (name == "augment") return DeformMode::kAugment;
  if (name == "pairs") return DeformMode::kPairs;
  throw std::invalid_argument("unknown mode '" + name + "' (expected deform, augment or pairs)");
}

namespace {

/// An environment variable's integer value for --shard auto; throws naming it when it is not one.
int64_t shard_env_integer(const char* name, const std::string& value) {
  const auto v = detail::parse_integer(value);
  if (!v)
    throw std::invalid_argument("--shard auto: " + std::string(name) + "='" + value +
                                "' is not an integer");
  return *v;
}

std::optional<std::string> env_value(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::optional<std::string>(v) : std::nullopt;
}

/// --shard auto: the shard of a Slurm job array task (SLURM_ARRAY_TASK_ID -
/// SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT) or of a torchrun worker
/// (RANK of WORLD_SIZE), and which variables gave it.
std::pair<std::pair<int64_t, int64_t>, std::string> shard_from_environment() {
  const auto need = [&](const char* name, const char* partner) {
    const auto v = env_value(name);
    if (!v)
      throw std::invalid_argument("--shard auto: " + std::string(partner) + " is set but " + name +
                                  " is not; both are needed");
    return shard_env_integer(name, *v);
  };
  if (env_value("SLURM_ARRAY_TASK_ID") || env_value("SLURM_ARRAY_TASK_COUNT")) {
    const int64_t id = need("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT");
    const int64_t n = need("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID");
    std::string used = "SLURM_ARRAY_TASK_ID=" + std::to_string(id) +
                       ", SLURM_ARRAY_TASK_COUNT=" + std::to_string(n);
    int64_t min = 0;
    if (const auto m = env_value("SLURM_ARRAY_TASK_MIN")) {
      min = shard_env_integer("SLURM_ARRAY_TASK_MIN", *m);
      used += ", SLURM_ARRAY_TASK_MIN=" + std::to_string(min);
    }
    if (const auto step = env_value("SLURM_ARRAY_TASK_STEP");
        step && shard_env_integer("SLURM_ARRAY_TASK_STEP", *step) != 1)
      throw std::invalid_argument("--shard auto: SLURM_ARRAY_TASK_STEP=" + *step +
                                  ": the job array must be a contiguous range (e.g. --array=0-7)");
    return {{id - min, n}, used};
  }
  if (env_value("RANK") || env_value("WORLD_SIZE")) {
    const int64_t i = need("RANK", "WORLD_SIZE");
    const int64_t n = need("WORLD_SIZE", "RANK");
    return {{i, n}, "RANK=" + std::to_string(i) + ", WORLD_SIZE=" + std::to_string(n)};
  }
  throw std::invalid_argument(
      "--shard auto: neither SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (a Slurm job array) "
      "nor RANK and "
      "WORLD_SIZE (torchrun) are set; give --shard i/n");
}

}  // namespace

std::pair<int64_t, int64_t> parse_shard(const std::string& text) {
  if (text == "auto") {
    const auto [shard, used] = shard_from_environment();
    const auto [i, n] = shard;
    if (n < 1 || i < 0 || i >= n)
      throw std::invalid_argument("--shard auto: " + used + " gives shard " + std::to_string(i) +
                                  "/" + std::to_string(n) + ", not i/n with 0 <= i < n");
    log::info("drdm_deform: --shard auto: shard " + std::to_string(i) + "/" + std::to_string(n) +
              " from " + used);
    return shard;
  }
  const auto slash = text.find('/');
  const auto i = slash == std::string::npos
                     ? std::nullopt
                     : detail::parse_integer(std::string_view(text).substr(0, slash));
  const auto n = slash == std::string::npos
                     ? std::nullopt
                     : detail::parse_integer(std::string_view(text).substr(slash + 1));
  if (!i || !n)
    throw std::invalid_argument("--shard: expected i/n (e.g. 0/4) or auto, got '" + text + "'");
  return {*i, *n};
}

std::vector<DeformLevel> parse_levels(const std::string& text) {
  std::vector<DeformLevel> out;
  std::stringstream in(text);
  std::string item;
  auto number = [&](const std::string& s) {
    const auto v = detail::parse_integer(s);
    if (!v || *v < 1)
      throw std::invalid_argument("levels: '" + item +
                                  "' is not a level (a positive integer, or aug:syn)");
    return *v;
  };
  while (std::getline(in, item, ',')) {
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (item.empty()) continue;
    const auto colon = item.find(':');
    DeformLevel l;
    if (colon == std::string::npos) {
      l.aug = l.syn = number(item);
    } else {
      l.aug = number(item.substr(0, colon));
      l.syn = number(item.substr(colon + 1));
    }
    out.push_back(l);
  }
  if (out.empty()) throw std::invalid_argument("levels: none given in '" + text + "'");
  return out;
}

namespace detail::deform {

std::string levels_text(const std::vector<DeformLevel>& levels) {
  std::string s;
  for (const auto& l : levels) {
    if (!s.empty()) s += ",";
    s += std::to_string(l.aug);
    if (l.syn != l.aug) s += ":" + std::to_string(l.syn);
  }
  return s;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse_json_file(const std::string& path) {
  try {
    return detail::parse_json_strict(read_text(path), "'" + path + "'");
  } catch (const json::exception& e) {
    throw std::runtime_error("'" + path + "' is not valid JSON: " + e.what());
  }
}

}  // namespace detail::deform

using detail::deform::levels_text;
using detail::deform::parse_json_file;

namespace {

/// An integer config value (1.7 is not 1), within [lo, hi].
int64_t integer_in(const json& v, int64_t lo, int64_t hi) {
  if (!v.is_number_integer() ||
      (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) ||
      v.get<int64_t>() < lo || v.get<int64_t>() > hi)
    throw std::invalid_argument("must be an integer in [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + "], got " + v.dump());
  return v.get<int64_t>();
}

/// Checks the numbers of `o` that the command line and a config can set.
/// Messages start with the option's name (config key = option name).
void check_ranges(const DeformJobOptions& o) {
  const auto in = [](const char* key, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
      throw std::invalid_argument(std::string(key) + ": must be in [" + std::to_string(lo) + ", " +
                                  std::to_string(hi) + "], got " + std::to_string(v));
  };
  in("samples", o.samples, 1, kMaxDeformSamples);
  in("batch", o.batch, 1, kMaxDeformBatch);
  in("threads", o.threads, 0, 1024);
  in("slice_axis", o.slice_axis, -1, 2);
  if (!(o.slice_sigma >= 0) || !std::isfinite(o.slice_sigma))
    throw std::invalid_argument("slice_sigma: must be a finite number >= 0, got " +
                                std::to_string(o.slice_sigma));
  if (o.levels.empty()) throw std::invalid_argument("levels: none given");
  if (o.mixed_precision != "none" && o.mixed_precision != "bf16")
    throw std::invalid_argument("mixed_precision: must be \"none\" or \"bf16\", got \"" +
                                o.mixed_precision + "\"");
}

/// A config's "levels": a string such as "30,45" or a list of levels (numbers or "aug:syn").
std::vector<DeformLevel> levels_from_json(const json& value) {
  if (value.is_string()) return parse_levels(value.get<std::string>());
  std::string s;
  if (!value.is_array())
    throw std::invalid_argument("expected a string such as \"30,45\" or a list");
  for (const auto& v : value)
    s += (s.empty() ? "" : ",") +
         (v.is_string() ? v.get<std::string>() : std::to_string(integer_in(v, 1, INT64_MAX)));
  return parse_levels(s);
}

using detail::in_range;
using detail::key;
using detail::key_as;
using detail::key_with;
using detail::Keys;
using O = DeformJobOptions;

/// A key holding one of the names that `parse` reads and to_string writes.
template <typename E>
detail::ConfigKey<O> named_key(const char* name, E O::*field, E (*parse)(const std::string&),
                               const char* doc) {
  return key_as<std::string>(
      name, field, parse, [](E e) { return std::string(to_string(e)); }, {}, "-", doc);
}

/// The keys of a drdm_deform config (each also an option of the command line), each declared once.
const Keys<O>& config_keys() {
  static const Keys<O> keys = [] {
    const auto levels_get = [](const O& o) { return levels_text(o.levels); };
    const auto levels_set = [](O& o, const json& v) {
      try {
        o.levels = levels_from_json(v);
      } catch (const json::exception&) {
        throw std::invalid_argument("must be a string such as \"30,45\" or a list of levels, got " +
                                    v.dump());
      }
    };
    return Keys<O>{
        key("model", &O::model, {}, "-", "model.pt / checkpoint.pt, or a shipped model's name"),
        named_key("mode", &O::mode, parse_deform_mode, "deform, augment or pairs"),
        key_with<json, O>("levels", levels_get, levels_set, {}, "steps",
                          "T' per sample: \"30,45\" or a list; pairs mode takes aug:syn"),
        key("samples", &O::samples, {in_range<int64_t>(1, kMaxDeformSamples)}, "-",
            "samples per input and level"),
        key("seed", &O::seed, {}, "-", "seed of every sample"),
        key("device", &O::device, {}, "-", "\"auto\", \"cpu\", \"cuda\" or \"cuda:N\""),
        key("batch", &O::batch, {in_range<int64_t>(1, kMaxDeformBatch)}, "-",
            "samples per network pass"),
        named_key("schedule", &O::schedule, parse_recovery_schedule, "the recovery schedule"),
        named_key("label_interpolation", &O::label_interpolation, parse_label_interpolation,
                  "how label maps are warped"),
        named_key("padding", &O::padding, parse_padding, "the image's value outside its grid"),
        key("slice_axis", &O::slice_axis, {in_range<int64_t>(-1, 2)}, "tensor axis",
            "3D inputs to a 2D model: the slicing axis (-1: the model's)"),
        named_key("slice_mode", &O::slice_mode, parse_slice_mode,
                  "3D inputs to a 2D model: coherent or independent slices"),
        key("slice_sigma", &O::slice_sigma, {detail::at_least(0.0)}, "slices",
            "coherent slices: smoothing of the recovery steps across slices"),
        key("previews", &O::previews, {}, "-", "write a preview PNG per sample"),
        key("threads", &O::threads, {in_range<int64_t>(0, 1024)}, "threads",
            "CPU threads (0: LibTorch's default)"),
        key("mixed_precision", &O::mixed_precision, {detail::one_of({"none", "bf16"})}, "-",
            "\"none\" or \"bf16\" (network passes under bf16 autocast)"),
    };
  }();
  return keys;
}

}  // namespace

void load_deform_config(const std::string& path, DeformJobOptions& o) {
  const json j = parse_json_file(path);
  if (!j.is_object()) throw std::invalid_argument("'" + path + "': expected a JSON object");
  const auto& keys = config_keys();
  for (const auto& [name, value] : j.items()) {
    const auto k =
        std::find_if(keys.begin(), keys.end(), [&](const auto& k) { return k.name == name; });
    // An unknown key: check_against names it, with the nearest key.
    if (k == keys.end()) {
      detail::check_against(detail::keys_json(keys, o), json{{name, value}}, "", path);
      continue;
    }
    k->read(value, path, name, o);
  }
}

std::string to_json(const DeformJobOptions& o) {
  json j = detail::keys_json(config_keys(), o);
  // The run's own options, which a config does not set.
  j["input"] = o.input;
  j["labels"] = o.labels;
  j["output"] = o.output;
  j["shard"] = std::to_string(o.shard_index) + "/" + std::to_string(o.shard_count);
  return j.dump(2);
}

void detail::deform::check_job_options(const DeformJobOptions& o) {
  if (o.input.empty()) throw std::invalid_argument("no input given");
  if (o.output.empty()) throw std::invalid_argument("no output folder given");
  check_ranges(o);
  if (o.shard_count < 1 || o.shard_index < 0 || o.shard_index >= o.shard_count)
    throw std::invalid_argument("shard must be i/n with 0 <= i < n, got " +
                                std::to_string(o.shard_index) + "/" +
                                std::to_string(o.shard_count));
  for (const auto& l : o.levels)
    if (o.mode != DeformMode::kPairs && l.syn != l.aug)
      throw std::invalid_argument("levels: '" + levels_text({l}) +
                                  "' gives a synthesis level (:" + std::to_string(l.syn) +
                                  "), which only pairs mode uses; in " + to_string(o.mode) +
                                  " mode give single levels, e.g. " + std::to_string(l.aug));
}

}  // namespace drdm
