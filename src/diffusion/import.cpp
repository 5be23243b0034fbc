#include "drdm/diffusion/import.h"

#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "drdm/core/log.h"
#include "drdm/core/module_state.h"
#include "drdm/diffusion/inference.h"
#include "drdm/diffusion/train_config.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/text_file.h"
#include "io/atomic_file.h"
#include "io/files.h"

namespace drdm {
namespace {

// Their module names and ours (RecResACNet in Diffusion/networks.py of
// def_diff_rec; our UNetImpl in network.cpp).
struct Rename {
  const char* theirs;
  const char* ours;
};
constexpr Rename kModules[] = {{"te1", "te1"},     {"te2", "te2"},          {"te3", "te3"},
                               {"te_mid", "te4"},  {"te4", "te5"},          {"te5", "te6"},
                               {"te_out", "te7"},  {"b1", "enc1"},          {"b2", "enc2"},
                               {"b3", "enc3"},     {"b_mid", "bottleneck"}, {"b4", "dec1"},
                               {"b5", "dec2"},     {"b_out", "dec3"},       {"down1", "down1"},
                               {"down2", "down2"}, {"down3", "down3"},      {"up1", "up1"},
                               {"up2", "up2"},     {"up3", "up3"},          {"conv_out", "out"}};
// Inside an ACNN-II block ("b1.0.conv0.weight" <-> "enc1.0.conv_in.weight").
constexpr Rename kBlockParts[] = {
    {"conv0.", "conv_in."}, {"ln.", "norm."}, {"convs.0.", "conv_d1."}, {"convs.1.", "conv_d3."}};
constexpr Rename kTable = {"time_embed.weight", "time_table"};

bool is_block_stage(const std::string& ours) {
  return ours.rfind("enc", 0) == 0 || ours.rfind("dec", 0) == 0 || ours == "bottleneck";
}

// "b1.0.convs.1.weight" -> "convs.1.weight" renamed inside the block.
std::string rename_block_part(const std::string& key, const std::string& rest, bool to_ours) {
  const auto dot = rest.find('.');
  const std::string index = rest.substr(0, dot);
  const bool numeric = dot != std::string::npos && !index.empty() &&
                       index.find_first_not_of("0123456789") == std::string::npos;
  if (numeric) {
    const std::string part = rest.substr(dot + 1);
    for (const auto& r : kBlockParts) {
      const std::string from = to_ours ? r.theirs : r.ours, to = to_ours ? r.ours : r.theirs;
      if (part.rfind(from, 0) == 0) return index + "." + to + part.substr(from.size());
    }
  }
  throw std::invalid_argument("'" + key + "' names no convolution or norm of an ACNN-II block");
}

std::string rename(const std::string& key, bool to_ours) {
  const std::string table_from = to_ours ? kTable.theirs : kTable.ours;
  if (key == table_from) return to_ours ? kTable.ours : kTable.theirs;
  const auto dot = key.find('.');
  const std::string head = key.substr(0, dot);
  for (const auto& r : kModules) {
    const std::string from = to_ours ? r.theirs : r.ours, to = to_ours ? r.ours : r.theirs;
    if (head != from || dot == std::string::npos) continue;
    const std::string rest = key.substr(dot + 1);
    return to + "." + (is_block_stage(r.ours) ? rename_block_part(key, rest, to_ours) : rest);
  }
  throw std::invalid_argument("'" + key + "' is not a key of " +
                              (to_ours ? "the authors' RecResACNet" : "libdrdm's RecoveryNet"));
}

std::string shape_text(at::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

// Their table [R, E] as ours [T + 1, E]: R = T rows (t = 0..T-1, their
// n_steps = T) get their last row repeated for t = T.
torch::Tensor fit_time_table(const torch::Tensor& theirs, at::IntArrayRef want) {
  const std::string key = kTable.theirs;
  if (theirs.dim() != 2 || theirs.size(1) != want[1])
    throw std::runtime_error(
        "key '" + key + "' has shape " + shape_text(theirs.sizes()) +
        ": its width does not match model.time_embedding = " + std::to_string(want[1]));
  if (theirs.size(0) == want[0]) return theirs;
  if (theirs.size(0) + 1 == want[0]) return torch::cat({theirs, theirs.narrow(0, -1, 1)}, 0);
  throw std::runtime_error(
      "key '" + key + "' has " + std::to_string(theirs.size(0)) +
      " rows (their n_steps), but sampler.timesteps = " + std::to_string(want[0] - 1) + " needs " +
      std::to_string(want[0] - 1) + " or " + std::to_string(want[0]));
}

torch::Tensor converted_value(const std::string& key, const std::string& ours,
                              const torch::Tensor& value, const torch::Tensor& expected) {
  if (!value.defined() || !at::isFloatingType(value.scalar_type()))
    throw std::runtime_error("key '" + key + "' is not a floating-point tensor");
  auto v = value.detach().to(torch::kCPU, torch::kFloat).contiguous();
  if (ours == kTable.ours) return fit_time_table(v, expected.sizes());
  if (v.sizes() != expected.sizes())
    throw std::runtime_error("key '" + key + "' has shape " + shape_text(v.sizes()) + ", but '" +
                             ours + "' of this network has " + shape_text(expected.sizes()));
  return v;
}

int64_t element_count(const StateDict& s) {
  int64_t n = 0;
  for (const auto& [k, v] : s) n += v.numel();
  return n;
}

// Max |their table - the "every_other" formula| over their rows.
double table_formula_diff(const StateDict& theirs, const NetworkOptions& options) {
  const auto it = theirs.find(kTable.theirs);
  if (it == theirs.end()) return 0;
  const auto table = it->second.to(torch::kFloat);
  const auto formula =
      module_state(*RecoveryNet(options)).at(kTable.ours).narrow(0, 0, table.size(0));
  return (table - formula).abs().max().item<double>();
}

}  // namespace

std::string authors_key_to_ours(const std::string& key) { return rename(key, true); }

std::string our_key_to_authors(const std::string& key) { return rename(key, false); }

void require_authors_architecture(const NetworkOptions& o) {
  const auto need = [](bool ok, const std::string& key, const std::string& value) {
    if (!ok)
      throw std::invalid_argument("config key 'model." + key + "' must be " + value +
                                  " for the authors' RecResACNet");
  };
  need(o.in_channels == 1, "in_channels", "1");
  need(o.time_frequencies == TimeFrequencies::kEveryOther, "time_frequencies", "\"every_other\"");
  need(o.time_mlp_slope == 0.0, "time_mlp_slope", "0 (a ReLU)");
  need(!o.decoder_norm, "decoder_norm", "false");
  need(o.output_units == OutputUnits::kImageSize, "output_units", "\"image_size\"");
  need(o.output_clamp, "output_clamp", "true");
}

StateDict convert_authors_state(const StateDict& theirs, const NetworkOptions& options) {
  require_authors_architecture(options);
  const auto expected = module_state(*RecoveryNet(options));
  StateDict out;
  for (const auto& [key, value] : theirs) {
    std::string ours;
    try {
      ours = authors_key_to_ours(key);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error("unexpected key in the authors' state dict: " +
                               std::string(e.what()));
    }
    const auto it = expected.find(ours);
    if (it == expected.end())
      throw std::runtime_error("unexpected key '" + key + "' (libdrdm '" + ours +
                               "'): this network has no such tensor");
    out[ours] = converted_value(key, ours, value, it->second);
  }
  for (const auto& [ours, value] : expected) {
    if (!out.count(ours))
      throw std::runtime_error("missing key '" + our_key_to_authors(ours) +
                               "' in the authors' state dict (libdrdm '" + ours + "', shape " +
                               shape_text(value.sizes()) + ")");
  }
  return out;
}

namespace {

nlohmann::json provenance(const std::string& pth, const ImportSummary& s) {
  return {{"source", detail::base_name(pth)},
          {"source_format", "torch.save state dict of RecResACNet (jianqingzheng/def_diff_rec)"},
          {"tensors", s.tensors},
          {"elements", s.elements},
          {"parameters", s.parameters},
          {"time_table_rows", s.table_rows},
          {"time_table_formula_max_diff", s.table_formula_max_diff},
          {"time_table_note",
           "their rows t = 0..T-1 kept; row T repeats row T-1 (their network never saw t = T)"}};
}

}  // namespace

ImportSummary import_authors_model(const std::string& pth, const std::string& config_path,
                                   const std::string& output_dir,
                                   const std::vector<std::string>& overrides, bool overwrite) {
  const auto config = load_train_config(config_path, overrides);
  const auto options = network_options(config);
  require_authors_architecture(options);
  ImportSummary s;
  s.model = detail::join(output_dir, "model.pt");
  for (const char* name : {"model.pt", "config.json", "import.json"})
    detail::require_distinct(detail::join(output_dir, name), {pth, config_path});
  if (!overwrite && detail::file_exists(s.model))
    throw std::runtime_error("'" + s.model + "' exists (overwrite it with --force)");
  const auto theirs = read_torch_state_dict(pth);
  const auto state = convert_authors_state(theirs, options);
  s.tensors = static_cast<int64_t>(theirs.size());
  s.elements = element_count(theirs);
  s.parameters = parameter_count(*RecoveryNet(options));
  s.table_rows = theirs.at(kTable.theirs).size(0);
  s.table_formula_max_diff = table_formula_diff(theirs, options);
  if (s.table_formula_max_diff > 1e-3)
    log::warn("the time table of '" + pth + "' differs from the \"every_other\" formula by " +
              std::to_string(s.table_formula_max_diff) + " (kept as it is)");
  detail::make_dirs(output_dir);
  save_checkpoint(s.model, "drdm", to_json(config), 0, state);
  write_text_atomically(detail::join(output_dir, "config.json"), to_json(config) + "\n");
  write_text_atomically(detail::join(output_dir, "import.json"), provenance(pth, s).dump(2) + "\n");
  load_model(s.model);  // read back: the file loads into the network its config builds
  return s;
}

}  // namespace drdm
