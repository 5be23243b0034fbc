/// @file Importing the authors' published recovery networks: the RecResACNet
/// state dicts (`torch.save(net.state_dict())`) of the public repository
/// jianqingzheng/def_diff_rec (Apache-2.0), converted into libdrdm model files.
///
/// Their network is our RecoveryNet with the options
///   model.time_frequencies = "every_other", model.time_mlp_slope = 0,
///   model.decoder_norm = false, model.output_units = "image_size",
///   model.output_clamp = true, model.in_channels = 1
/// and the time embedding width of their file (100 for their models). Their
/// embedding table has T rows (t = 0..T-1); ours has T + 1 (t = 0..T): the
/// converter keeps their rows and repeats their last row for t = T.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "drdm/diffusion/network.h"

namespace drdm {

/// Named tensors, as in a PyTorch state dict.
using StateDict = std::map<std::string, torch::Tensor>;

/// Reads a state dict saved by Python's `torch.save` in the zip format
/// (PyTorch >= 1.6): a dict of names to tensors (other entries are an error).
/// Throws std::runtime_error naming the file.
StateDict read_torch_state_dict(const std::string& path);

/// libdrdm's key for a key of the authors' RecResACNet state dict, e.g.
/// "b_mid.0.convs.1.weight" -> "bottleneck.0.conv_d3.weight",
/// "te_mid.0.weight" -> "te4.0.weight", "time_embed.weight" -> "time_table".
/// Throws std::invalid_argument for a key that cannot belong to RecResACNet.
std::string authors_key_to_ours(const std::string& key);

/// The inverse of authors_key_to_ours.
std::string our_key_to_authors(const std::string& key);

/// Throws std::invalid_argument naming the config key ("model.decoder_norm ...")
/// unless `options` build the authors' architecture.
void require_authors_architecture(const NetworkOptions& options);

/// Converts the authors' state dict into RecoveryNet's names (load_module_state),
/// shapes and dtype (float32) for a network built with `options`. Strict:
/// a missing, unexpected or mis-shaped key is an error naming their key and
/// ours (std::runtime_error); so are options that are not the authors'.
StateDict convert_authors_state(const StateDict& theirs, const NetworkOptions& options);

/// What import_authors_model did.
struct ImportSummary {
  std::string model;                  ///< OUTPUT/model.pt
  int64_t tensors = 0;                ///< entries of their state dict
  int64_t elements = 0;               ///< scalars of their state dict (embedding table included)
  int64_t parameters = 0;             ///< trainable scalars of the converted network
  int64_t table_rows = 0;             ///< rows of their embedding table
  double table_formula_max_diff = 0;  ///< their table vs our "every_other" formula
};

/// Reads PTH, builds the network of the training config CONFIG (with
/// `overrides` "section.key=value"), converts, and writes OUTPUT/model.pt
/// (kind "drdm", step 0, the resolved config embedded), OUTPUT/config.json
/// and OUTPUT/import.json (provenance and counts). The written model is read
/// back and checked. An existing OUTPUT/model.pt is an error unless `overwrite`.
ImportSummary import_authors_model(const std::string& pth, const std::string& config_path,
                                   const std::string& output_dir,
                                   const std::vector<std::string>& overrides = {},
                                   bool overwrite = false);

}  // namespace drdm
