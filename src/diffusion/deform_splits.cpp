// splits_final.json of a dataset output: nnU-Net v2's cross-validation
// split, each source case with its deformed copies in one fold.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <regex>
#include <set>

#include "diffusion/deform_internal.h"
#include "drdm/core/log.h"
#include "drdm/io/text_file.h"
#include "io/files.h"

namespace drdm::detail::deform {

/// The case a case of ours comes from: its name without the
/// "_drdm_T<aug>[-<syn>]_s<k>" suffixes drdm_deform adds (all of them, for a
/// dataset deformed twice).
std::string source_case(std::string name) {
  static const std::regex suffix("_drdm_T[0-9]+(-[0-9]+)?_s[0-9]+$");
  std::smatch m;
  while (std::regex_search(name, m, suffix)) name.erase(static_cast<size_t>(m.position(0)));
  return name;
}

namespace {

/// Validation folds of scikit-learn's KFold(n_splits, shuffle=True,
/// random_state=seed) over n items, which nnU-Net v2 uses for its default
/// split (seed 12345): the indices 0..n-1 shuffled as numpy's legacy
/// RandomState(seed).shuffle does (MT19937; position i swapped with a draw
/// in [0, i] by masked rejection, i from n-1 down to 1), then cut into
/// n_splits consecutive folds, the first n % n_splits of them one larger.
std::vector<std::vector<size_t>> kfold_validation(size_t n, size_t n_splits, uint32_t seed) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t{0});
  std::mt19937 mt(seed);
  for (size_t i = n; i-- > 1;) {
    uint32_t mask = static_cast<uint32_t>(i);
    for (int s = 1; s < 32; s *= 2) mask |= mask >> s;
    uint32_t j = 0;
    do {
      j = static_cast<uint32_t>(mt()) & mask;
    } while (j > i);
    std::swap(idx[i], idx[j]);
  }
  std::vector<std::vector<size_t>> folds;
  size_t start = 0;
  for (size_t f = 0; f < n_splits; ++f) {
    const size_t len = n / n_splits + (f < n % n_splits ? 1 : 0);
    folds.emplace_back(idx.begin() + static_cast<std::ptrdiff_t>(start),
                       idx.begin() + static_cast<std::ptrdiff_t>(start + len));
    start += len;
  }
  return folds;
}

}  // namespace

/// Writes OUT/splits_final.json (nnU-Net v2's cross-validation split) over
/// `cases`, keeping every source case and its deformed copies in one fold:
/// the input's own splits_final.json extended by the copies when it has one,
/// else nnU-Net's default 5-fold split of the input's cases (the same
/// validation cases as nnU-Net would pick for the input dataset).
void write_splits(const Inputs& in, const std::string& out_dir,
                  const std::map<std::string, std::string>& cases) {
  // Folds as (train, val) sets of source cases.
  std::vector<std::pair<std::set<std::string>, std::set<std::string>>> folds;
  if (!in.splits.is_null()) {
    for (const auto& f : in.splits)
      folds.push_back(
          {f["train"].get<std::set<std::string>>(), f["val"].get<std::set<std::string>>()});
  } else {
    std::set<std::string> unique;
    for (const auto& c : in.cases) unique.insert(source_case(c.name));
    const std::vector<std::string> sources(unique.begin(), unique.end());
    if (sources.size() < 2) {
      log::warn(
          "drdm_deform: no splits_final.json written: cross-validation needs at least 2 source "
          "cases");
      return;
    }
    const auto val = kfold_validation(sources.size(), std::min<size_t>(5, sources.size()), 12345);
    for (const auto& v : val) {
      std::set<std::string> tr(unique), va;
      for (size_t i : v) va.insert(sources[i]), tr.erase(sources[i]);
      folds.push_back({tr, va});
    }
  }
  json out = json::array();
  std::set<std::string> placed;
  for (const auto& [tr, va] : folds) {
    json train = json::array(), val = json::array();
    for (const auto& [name, ext] : cases) {
      const std::string src = source_case(name);
      if (tr.count(src)) train.push_back(name), placed.insert(name);
      if (va.count(src)) val.push_back(name), placed.insert(name);
    }
    out.push_back({{"train", train}, {"val", val}});
  }
  for (const auto& [name, ext] : cases)
    if (!placed.count(name))
      log::warn("drdm_deform: case '" + name +
                "' is in no fold of splits_final.json (its source case '" + source_case(name) +
                "' is in none)");
  write_text_atomically(join(out_dir, "splits_final.json"), out.dump(4) + "\n");
}

}  // namespace drdm::detail::deform
