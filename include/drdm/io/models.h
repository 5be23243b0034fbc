/// @file The models that ship with libdrdm, found by name or by path.
#pragma once

#include <string>
#include <vector>

namespace drdm {

/// A model shipped in models/<name>/ (installed to <prefix>/share/drdm/models/).
struct ShippedModel {
  std::string name;         ///< e.g. "cardiac2d"
  std::string path;         ///< its model.pt, where it was found
  std::string description;  ///< the first sentence of its model card (what it is)
  /// What it does, from its folder's name: "segmentation" (seg-*),
  /// "registration" (reg-*), else "deformation" (a DRDM recovery network).
  std::string task;
};

/// The name of the model that drdm_deform uses by default.
inline constexpr const char* kDefaultModelName = "cardiac2d";

/// The shipped models found next to the installed programs
/// (<exe>/../share/drdm/models) or in the source tree, sorted by name.
std::vector<ShippedModel> shipped_models();

/// A path to a model.pt / checkpoint.pt: an existing file is returned as it
/// is; otherwise the name of a shipped model. Throws std::runtime_error that
/// lists the shipped names when it is neither.
std::string resolve_model_path(const std::string& name_or_path);

/// The default model: $DRDM_MODEL (a path or a shipped name) if set, else the
/// shipped kDefaultModelName. Throws if none exists.
std::string default_model_path();

/// "  cardiac2d      The DRDM recovery network for 2D cardiac MRI ..." lines
/// for --help texts: the shipped models of one task (see ShippedModel::task).
std::string shipped_models_help(const std::string& task = "deformation");

}  // namespace drdm
