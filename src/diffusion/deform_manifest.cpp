// drdm_deform's manifest, and merging the shards of one job (--shard i/n)
// into what the unsharded run writes.
#include <dirent.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <stdexcept>

#include "core/parse_integer.h"
#include "diffusion/deform_internal.h"
#include "drdm/core/log.h"
#include "drdm/io/text_file.h"
#include "io/files.h"
#include "io/run_lock.h"

namespace drdm::detail::deform {
namespace {

json level_summary(const json& samples) {
  std::map<std::string, std::vector<json>> by_level;
  for (const auto& s : samples) by_level[s["level"].dump()].push_back(s["metrics"]);
  json out = json::array();
  for (const auto& [level, list] : by_level) {
    json row;
    row["level"] = json::parse(level);
    row["samples"] = list.size();
    for (const char* key :
         {"max_magnitude_pct", "mean_magnitude_pct", "folding_ratio", "slice_incoherence"}) {
      std::vector<double> v;
      for (const auto& m : list)
        if (m.contains(key)) v.push_back(m[key].get<double>());
      if (v.empty()) continue;  // slice_incoherence: only volumes deformed slice by slice
      double sum = 0, sq = 0;
      for (double x : v) sum += x;
      const double mean = sum / static_cast<double>(v.size());
      for (double x : v) sq += std::pow(x - mean, 2);
      row[key] = {{"mean", mean},
                  {"std", v.size() > 1 ? std::sqrt(sq / static_cast<double>(v.size() - 1)) : 0.0}};
    }
    out.push_back(row);
  }
  return out;
}

}  // namespace

/// What describes the run beside its samples: program, model, options, summary.
json manifest_json(const DeformJobOptions& o, const std::string& model_path, int64_t model_step,
                   const Deformer& deformer, size_t cases, json samples) {
  json m;
  m["program"] = "drdm_deform";
  m["mode"] = to_string(o.mode);
  m["model"] = model_path;
  m["model_step"] = model_step;
  m["model_size"] = deformer.model_size();
  m["device"] = deformer.device().str();
  m["options"] = json::parse(to_json(o));
  m["metrics_note"] =
      "metrics of the written field on the input grid: magnitude ||(u_i / size_i)_i|| in % of the "
      "image size (max "
      "and mean over voxels), folding_ratio = fraction of voxels with det(I + grad u) <= 0";
  m["cases"] = cases;
  m["summary"] = level_summary(samples);
  m["samples"] = std::move(samples);
  return m;
}

// ---------------------------------------------------------------------------
// drdm_deform merge: the shards of one job -> what the unsharded run writes.
namespace {

/// One shard's manifest, checked and parsed.
struct Shard {
  int64_t index = 0, count = 0;
  std::string folder;    ///< the folder it lies in
  std::string manifest;  ///< its path
  json m;
};

std::string shard_file(const std::string& prefix, int64_t i, int64_t n) {
  return prefix + "-shard-" + std::to_string(i) + "-of-" + std::to_string(n) + ".json";
}

/// "manifest-shard-3-of-8.json" -> (3, 8) for `prefix` "manifest"; (-1, -1) for other names.
std::pair<int64_t, int64_t> shard_of_name(const std::string& name, const std::string& prefix) {
  static const std::regex re("-shard-([0-9]{1,9})-of-([0-9]{1,9})\\.json");
  std::smatch m;
  if (name.compare(0, prefix.size(), prefix) != 0) return {-1, -1};
  const std::string rest = name.substr(prefix.size());
  if (!std::regex_match(rest, m, re)) return {-1, -1};
  return {*detail::parse_integer(m[1].str()), *detail::parse_integer(m[2].str())};
}

/// "cuda:1" -> "cuda": shards on different GPUs of one kind are one job.
json device_kind(const json& device) {
  if (!device.is_string()) return device;
  const auto text = device.get<std::string>();
  return text.substr(0, text.find(':'));
}

/// What makes two runs one job: the model, the kind of device and the
/// options but the shard and the output folder, flattened ("options.seed").
json job_identity(const json& manifest) {
  json j;
  for (const char* k : {"program", "mode", "model", "model_step", "model_size", "device"})
    j[k] = manifest.contains(k) ? manifest[k] : json();
  j["device"] = device_kind(j["device"]);
  for (const auto& [k, v] : manifest["options"].items())
    if (k != "shard" && k != "output") j["options." + k] = k == "device" ? device_kind(v) : v;
  return j;
}

/// The first key whose value differs between `a` and `b` (objects), or "".
std::string first_difference(const json& a, const json& b) {
  for (const auto& [k, v] : a.items())
    if (!b.contains(k) || b[k] != v) return k;
  for (const auto& [k, v] : b.items())
    if (!a.contains(k)) return k;
  return "";
}

/// Throws naming both files and the key when `other` is not a run of the job of `ref`.
void require_same_job(const json& ref, const std::string& ref_path, const json& other,
                      const std::string& other_path, const std::string& hint) {
  const json a = job_identity(ref), b = job_identity(other);
  const std::string key = first_difference(a, b);
  if (key.empty()) return;
  const auto shown = [&](const json& j) {
    return j.contains(key) ? j[key].dump() : std::string("absent");
  };
  throw std::runtime_error("'" + other_path + "' and '" + ref_path + "' are not runs of one job: " +
                           key + " is " + shown(b) + " there, " + shown(a) + " here" + hint);
}

/// A drdm_deform manifest (program, options, cases, samples), or an error naming `path`.
json load_manifest(const std::string& path) {
  json m = parse_json_file(path);
  const auto bad = [&](const std::string& key) {
    return std::runtime_error("'" + path + "' is not a drdm_deform manifest (key '" + key +
                              "' missing or malformed)");
  };
  if (!m.is_object() || m.value("program", "") != "drdm_deform") throw bad("program");
  if (!m.contains("options") || !m["options"].is_object() || !m["options"].contains("shard"))
    throw bad("options");
  if (!m.contains("cases") || !m["cases"].is_number_unsigned()) throw bad("cases");
  if (!m.contains("samples") || !m["samples"].is_array()) throw bad("samples");
  for (const auto& s : m["samples"])
    if (!s.is_object() || !s.contains("input") || !s.contains("outputs") ||
        !s["outputs"].is_object() || !s.contains("level") || !s.contains("metrics"))
      throw bad("samples");
  return m;
}

/// Non-hidden files and folders under `folder`, relative to it, sorted ("images",
/// "images/a.nii.gz").
void walk(const std::string& folder, const std::string& rel, std::vector<std::string>& files,
          std::vector<std::string>& dirs) {
  const std::string here = rel.empty() ? folder : join(folder, rel);
  DIR* dir = ::opendir(here.c_str());
  if (dir == nullptr) throw std::runtime_error("cannot read folder '" + here + "'");
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') names.push_back(e->d_name);
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    const std::string r = rel.empty() ? name : rel + "/" + name;
    if (detail::dir_exists(join(folder, r))) {
      dirs.push_back(r);
      walk(folder, r, files, dirs);
    } else if (detail::file_exists(join(folder, r))) {
      files.push_back(r);
    }
  }
}

std::string real_path(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) != nullptr ? std::string(buf) : std::string();
}

/// The absolute path `path` has or will have: links resolved in the part that exists.
std::string future_path(const std::string& path) {
  const std::string real = real_path(path);
  if (!real.empty()) return real;
  const auto slash =
      path.find_last_of('/', path.size() > 1 && path.back() == '/' ? path.size() - 2 : path.npos);
  if (slash == std::string::npos) return join(real_path("."), path);
  return join(future_path(slash == 0 ? "/" : path.substr(0, slash)), path.substr(slash + 1));
}

bool same_bytes(const std::string& a, const std::string& b) {
  struct stat sa {
  }, sb{};
  if (::stat(a.c_str(), &sa) != 0 || ::stat(b.c_str(), &sb) != 0) return false;
  if (sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino) return true;
  return sa.st_size == sb.st_size && read_text(a) == read_text(b);
}

/// Appends the shard manifests in folder `f` to `found`; throws when it holds none.
void find_shard_manifests(const std::string& f, std::vector<Shard>& found) {
  const size_t before = found.size();
  for (const auto& name : list_files(f)) {
    const auto [i, n] = shard_of_name(name, "manifest");
    if (i < 0) continue;
    const std::string path = join(f, name);
    if (n < 1 || i >= n || name != shard_file("manifest", i, n))
      throw std::runtime_error("'" + path + "' does not name a shard i of n with 0 <= i < n");
    found.push_back({i, n, f, path, load_manifest(path)});
    const std::string shard = found.back().m["options"]["shard"].is_string()
                                  ? found.back().m["options"]["shard"].get<std::string>()
                                  : "";
    if (shard != std::to_string(i) + "/" + std::to_string(n))
      throw std::runtime_error("'" + path + "': options.shard is '" + shard + "', not " +
                               std::to_string(i) + "/" + std::to_string(n) + " as its name says");
  }
  if (found.size() == before)
    throw std::runtime_error("'" + f +
                             "' holds no shard manifest (manifest-shard-I-of-N.json, written by "
                             "drdm_deform --shard)");
}

/// Checks that every shard is of the first one's job and has its config beside it.
void require_one_job(const std::vector<Shard>& by_index) {
  const int64_t n = static_cast<int64_t>(by_index.size());
  for (const auto& s : by_index) {
    require_same_job(by_index[0].m, by_index[0].manifest, s.m, s.manifest, "");
    const std::string config = join(s.folder, shard_file("config", s.index, n));
    if (!detail::file_exists(config))
      throw std::runtime_error("'" + config + "' is missing beside '" + s.manifest + "'");
    const json c = parse_json_file(config);
    const std::string key =
        c.is_object() ? first_difference(s.m["options"], c) : std::string("(not an object)");
    if (!key.empty())
      throw std::runtime_error("'" + config + "' does not hold the options of '" + s.manifest +
                               "' (key '" + key + "')");
  }
}

/// The shard manifests in `folders`, by index: n of them, 0..n-1 each once, of one job.
std::vector<Shard> find_shards(const std::vector<std::string>& folders) {
  std::vector<Shard> found;
  for (const auto& f : folders) find_shard_manifests(f, found);
  const int64_t n = found[0].count;
  const std::string first = found[0].manifest;
  std::vector<Shard> by_index(static_cast<size_t>(n));
  std::vector<bool> seen(static_cast<size_t>(n), false);
  for (auto& s : found) {
    if (s.count != n)
      throw std::runtime_error("'" + s.manifest + "' is one of " + std::to_string(s.count) +
                               " shards, but '" + first + "' one of " + std::to_string(n) +
                               ": not shards of one job");
    const auto k = static_cast<size_t>(s.index);
    if (seen[k])
      throw std::runtime_error("shard " + std::to_string(s.index) + "/" + std::to_string(n) +
                               " is there twice: '" + by_index[k].manifest + "' and '" +
                               s.manifest + "'");
    seen[k] = true;
    by_index[k] = std::move(s);
  }
  std::string where;
  for (const auto& f : folders) where += (where.empty() ? "'" : ", '") + f + "'";
  for (int64_t i = 0; i < n; ++i)
    if (!seen[static_cast<size_t>(i)])
      throw std::runtime_error("shard " + std::to_string(i) + "/" + std::to_string(n) +
                               " is missing: no '" + shard_file("manifest", i, n) + "' in " +
                               where + " (run that shard, or wait until it has finished)");
  require_one_job(by_index);
  return by_index;
}

/// The samples of one case (one input) in a manifest: consecutive runs.
std::vector<json> case_groups(const Shard& s) {
  std::vector<json> groups;
  for (const auto& x : s.m["samples"]) {
    if (groups.empty() || groups.back()[0]["input"] != x["input"]) groups.push_back(json::array());
    groups.back().push_back(x);
  }
  if (groups.size() != s.m["cases"].get<size_t>())
    throw std::runtime_error("'" + s.manifest + "' counts " + s.m["cases"].dump() +
                             " cases but has samples of " + std::to_string(groups.size()));
  return groups;
}

/// The relative paths of a sample's outputs.
std::vector<std::string> output_paths(const json& sample) {
  std::vector<std::string> out;
  for (const auto& [k, v] : sample["outputs"].items())
    for (const auto& p : v.is_array() ? v : json::array({v})) out.push_back(p.get<std::string>());
  return out;
}

/// All samples in the unsharded run's order: shard i did cases i, i + n, ...
/// Checks that the shards split one list of cases, each case and file once.
json merged_samples(const std::vector<Shard>& shards) {
  const auto n = shards.size();
  std::vector<std::vector<json>> groups;
  size_t cases = 0;
  for (const auto& s : shards) cases += (groups.emplace_back(case_groups(s))).size();
  std::map<std::string, std::string> owner;  // input or output file -> manifest
  for (size_t i = 0; i < n; ++i) {
    const size_t expect = cases / n + (i < cases % n ? 1 : 0);
    if (groups[i].size() != expect)
      throw std::runtime_error("'" + shards[i].manifest + "' has " +
                               std::to_string(groups[i].size()) + " cases, but shard " +
                               std::to_string(i) + " of " + std::to_string(n) + " of " +
                               std::to_string(cases) + " cases has " + std::to_string(expect) +
                               ": the shards did not read the same input");
    for (const auto& g : groups[i]) {
      std::vector<std::string> keys{"input " + g[0]["input"].dump()};
      for (const auto& x : g)
        for (const auto& p : output_paths(x)) {
          keys.push_back("file '" + p + "'");
          if (!detail::file_exists(join(shards[i].folder, p)))
            throw std::runtime_error("'" + join(shards[i].folder, p) + "', listed in '" +
                                     shards[i].manifest + "', is missing");
        }
      for (const auto& k : keys) {
        const auto [it, fresh] = owner.emplace(k, shards[i].manifest);
        if (!fresh)
          throw std::runtime_error("the " + k + " is in both '" + it->second + "' and '" +
                                   shards[i].manifest + "': duplicate samples");
      }
    }
  }
  json samples = json::array();
  for (size_t j = 0; j < cases; ++j)
    for (const auto& x : groups[j % n][j / n]) samples.push_back(x);
  return samples;
}

/// The manifest and options of the merged run: the unsharded run's.
json merged_manifest(const std::vector<Shard>& shards, const std::string& output, json samples) {
  json m = shards[0].m;
  m["options"]["shard"] = "0/1";
  m["options"]["output"] = output;
  size_t cases = 0;
  for (const auto& s : shards) cases += s.m["cases"].get<size_t>();
  m["cases"] = cases;
  m["summary"] = level_summary(samples);
  m["samples"] = std::move(samples);
  return m;
}

/// Refuses `merged` when a manifest or config there is of another job.
void require_no_other_run(const std::string& merged, const json& job, const std::string& job_path) {
  if (!detail::dir_exists(merged)) return;
  for (const auto& name : list_files(merged)) {
    const std::string path = join(merged, name);
    const bool manifest = name == "manifest.json" || shard_of_name(name, "manifest").first >= 0;
    const bool config = name == "config.json" || shard_of_name(name, "config").first >= 0;
    if (!manifest && !config) continue;
    const std::string hint =
        " (the merged folder '" + merged + "' holds another run: choose a new folder)";
    if (manifest) {
      json m;
      try {
        m = load_manifest(path);
      } catch (const std::runtime_error&) {
        throw std::runtime_error("'" + path + "' is not a manifest of this job" + hint);
      }
      require_same_job(job, job_path, m, path, hint);
    } else {
      const json c = parse_json_file(path);
      if (!c.is_object())
        throw std::runtime_error("'" + path + "' is not a config of this job" + hint);
      json as_manifest = job;
      as_manifest["options"] = c;
      require_same_job(job, job_path, as_manifest, path, hint);
    }
  }
}

/// Files the shard folders bring into `merged`: relative path -> source.
/// Records, JSON files the merge rewrites and hidden files are left out.
std::map<std::string, std::string> plan_copies(const std::vector<std::string>& folders,
                                               const std::string& merged, bool dataset,
                                               std::set<std::string>& dirs) {
  const std::string merged_real = real_path(merged);
  std::map<std::string, std::string> plan;
  for (const auto& f : folders) {
    if (!merged_real.empty() && real_path(f) == merged_real) continue;
    std::vector<std::string> files, sub;
    walk(f, "", files, sub);
    dirs.insert(sub.begin(), sub.end());
    for (const auto& rel : files) {
      if (rel == "manifest.json" || rel == "config.json" ||
          shard_of_name(rel, "manifest").first >= 0 || shard_of_name(rel, "config").first >= 0 ||
          (dataset && (rel == "dataset.json" || rel == "splits_final.json")))
        continue;
      const std::string from = join(f, rel);
      const auto [it, fresh] = plan.emplace(rel, from);
      if (!fresh && !same_bytes(it->second, from))
        throw std::runtime_error("'" + it->second + "' and '" + from +
                                 "' differ: not shards of one job");
    }
  }
  for (const auto& [rel, from] : plan) {
    const std::string to = join(merged, rel);
    if (detail::dir_exists(to) || (detail::file_exists(to) && !same_bytes(from, to)))
      throw std::runtime_error("'" + to + "' already exists and differs from '" + from +
                               "' (the merged folder '" + merged +
                               "' holds another run: choose a new folder)");
  }
  return plan;
}

/// A hard link, or an atomic byte copy where links cannot be made (another file system).
void link_or_copy(const std::string& from, const std::string& to) {
  if (detail::file_exists(to)) return;  // the same bytes, checked by plan_copies
  if (::link(from.c_str(), to.c_str()) == 0) return;
  copy_file(from, to);
}

/// A shard's dataset.json, in its key order.
nlohmann::ordered_json read_dataset_json(const std::string& path) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(read_text(path));
  } catch (const json::exception& e) {
    throw std::runtime_error("'" + path + "' is not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw std::runtime_error("'" + path + "': expected a JSON object");
  return j;
}

/// Adds the folds of shard folder `f`'s splits_final.json, if any, to `train` and `val` (as
/// source cases); `first` is a folder with one (for messages).
void add_shard_splits(const std::string& f, const std::string& first,
                      std::vector<std::set<std::string>>& train,
                      std::vector<std::set<std::string>>& val) {
  Inputs shard;  // its splits, as folds of source cases
  shard.root = f;
  find_splits(shard);
  if (shard.splits.is_null()) return;
  if (!train.empty() && shard.splits.size() != train.size())
    throw std::runtime_error("'" + join(f, "splits_final.json") + "' has " +
                             std::to_string(shard.splits.size()) + " folds, '" +
                             join(first, "splits_final.json") + "' " +
                             std::to_string(train.size()) + ": not shards of one job");
  train.resize(shard.splits.size()), val.resize(shard.splits.size());
  for (size_t k = 0; k < shard.splits.size(); ++k) {
    for (const auto& c : shard.splits[k]["train"])
      train[k].insert(source_case(c.get<std::string>()));
    for (const auto& c : shard.splits[k]["val"]) val[k].insert(source_case(c.get<std::string>()));
  }
}

/// The merged dataset's Inputs as update_dataset_json and write_splits need
/// them, from the shards' outputs: the input's dataset.json (all but the
/// case lists each shard rewrote), the folds of the shards' splits (as
/// source cases), and nnU-Net channel naming when every image has it.
Inputs dataset_inputs(const std::vector<std::string>& folders, const std::string& merged) {
  Inputs in;
  in.dataset = true;
  const auto without_cases = [](nlohmann::ordered_json j) {
    j.erase("numTraining");
    j.erase("training");
    return j;
  };
  const auto has = [](const std::string& f, const char* name) {
    return detail::file_exists(join(f, name));
  };
  const auto with = std::find_if(folders.begin(), folders.end(),
                                 [&](const auto& f) { return has(f, "dataset.json"); });
  const auto with_splits = std::find_if(folders.begin(), folders.end(),
                                        [&](const auto& f) { return has(f, "splits_final.json"); });
  std::vector<std::set<std::string>> train, val;
  bool all_channels = true, any_image = false;
  for (const auto& f : folders) {
    for (const char* name : {"dataset.json", "splits_final.json"}) {
      const auto& other = std::string(name) == "dataset.json" ? with : with_splits;
      if (other != folders.end() && !has(f, name))
        throw std::runtime_error("'" + join(f, name) + "' is missing, but '" + join(*other, name) +
                                 "' is there");
    }
    const std::string path = join(f, "dataset.json");
    const nlohmann::ordered_json j = read_dataset_json(path);
    if (in.dataset_json.is_null()) in.dataset_json = j;
    if (without_cases(j) != without_cases(in.dataset_json))
      throw std::runtime_error("'" + path + "' and '" + join(folders[0], "dataset.json") +
                               "' differ beyond their case lists: not shards of one job");
    for (const auto& img : list_images(join(f, "imagesTr"))) {
      any_image = true;
      all_channels = all_channels && nnunet_channel(split_name(img).first).second >= 0;
    }
    if (with_splits != folders.end()) add_shard_splits(f, *with_splits, train, val);
  }
  in.root = merged;
  in.nnunet = any_image && all_channels;
  if (!train.empty()) {
    in.splits = json::array();
    for (size_t k = 0; k < train.size(); ++k)
      in.splits.push_back({{"train", train[k]}, {"val", val[k]}});
  }
  return in;
}

/// The merged folder the arguments name (the one shard folder when -o is not
/// given), checked: the shard folders exist, each once, and the merged folder
/// lies in none of them. `reals` gets the shard folders' real paths.
std::string merged_folder(const std::vector<std::string>& folders, const std::string& merged_arg,
                          std::set<std::string>& reals) {
  if (folders.empty()) throw std::invalid_argument("merge: no shard folders given");
  if (merged_arg.empty() && folders.size() > 1)
    throw std::invalid_argument("merge: " + std::to_string(folders.size()) +
                                " folders need -o MERGED (one shared folder is merged in place)");
  const std::string merged = merged_arg.empty() ? folders[0] : merged_arg;
  for (const auto& f : folders) {
    if (!detail::dir_exists(f)) throw std::runtime_error("shard folder '" + f + "' does not exist");
    if (!reals.insert(real_path(f)).second)
      throw std::invalid_argument("merge: folder '" + f + "' is given twice");
  }
  const std::string merged_abs = future_path(merged);
  for (const auto& r : reals)
    if (merged_abs.compare(0, r.size() + 1, r + "/") == 0)
      throw std::invalid_argument("merge: the merged folder '" + merged +
                                  "' lies inside the shard folder '" + r + "'");
  return merged;
}

/// What a merge writes, all checked before anything is written.
struct MergePlan {
  std::vector<Shard> shards;
  bool dataset = false;                       ///< a dataset output: dataset.json, splits
  std::set<std::string> dirs;                 ///< folders to make, relative
  std::map<std::string, std::string> copies;  ///< relative path -> source
  Inputs in;                                  ///< the merged dataset's, when `dataset`
  json manifest;
};

MergePlan plan_merge(const std::vector<std::string>& folders, const std::string& merged) {
  MergePlan p;
  p.shards = find_shards(folders);
  json samples = merged_samples(p.shards);
  const json& job = p.shards[0].m;
  require_no_other_run(merged, job, p.shards[0].manifest);
  p.dataset =
      job["mode"] != "pairs" && std::any_of(folders.begin(), folders.end(), [](const auto& f) {
        return detail::file_exists(join(f, "dataset.json"));
      });
  p.copies = plan_copies(folders, merged, p.dataset, p.dirs);
  if (p.dataset) p.in = dataset_inputs(folders, merged);
  p.manifest = merged_manifest(p.shards, merged, std::move(samples));
  return p;
}

/// Writes the merged folder as `p` plans it; returns the manifest's path.
std::string write_merged(const MergePlan& p, const std::string& merged) {
  for (const auto& d : p.dirs) detail::make_dirs(join(merged, d));
  for (const auto& [rel, from] : p.copies) link_or_copy(from, join(merged, rel));
  if (p.dataset) {
    const auto cases = cases_present(p.in, merged);
    update_dataset_json(p.in, merged, cases);
    write_splits(p.in, merged, cases);
  }
  write_text_atomically(join(merged, "config.json"), p.manifest["options"].dump(2) + "\n");
  const std::string manifest_path = join(merged, "manifest.json");
  write_text_atomically(manifest_path, p.manifest.dump(2) + "\n");
  return manifest_path;
}

}  // namespace
}  // namespace drdm::detail::deform

namespace drdm {

DeformMergeSummary merge_deform_shards(const std::vector<std::string>& folders,
                                       const std::string& merged_arg) {
  using namespace detail::deform;
  std::set<std::string> reals;
  const std::string merged = merged_folder(folders, merged_arg, reals);
  // No shard may still be writing: every folder locked for the whole merge.
  std::vector<std::unique_ptr<detail::RunLock>> locks;
  for (const auto& f : folders)
    locks.push_back(std::make_unique<detail::RunLock>(f, "drdm_deform merge"));
  // Everything is checked before anything is written.
  const MergePlan p = plan_merge(folders, merged);
  if (!reals.count(real_path(merged)))
    locks.push_back(std::make_unique<detail::RunLock>(merged, "drdm_deform merge"));
  const std::string manifest_path = write_merged(p, merged);
  const json& manifest = p.manifest;
  log::info(c10::str("drdm_deform merge: ", p.shards.size(), " shards, ",
                     manifest["cases"].get<size_t>(), " cases, ", manifest["samples"].size(),
                     " samples, ", p.copies.size(), " files brought into '", merged, "'"));
  DeformMergeSummary s;
  s.shards = static_cast<int64_t>(p.shards.size());
  s.cases = manifest["cases"].get<int64_t>();
  s.samples = static_cast<int64_t>(manifest["samples"].size());
  s.files = static_cast<int64_t>(p.copies.size());
  s.manifest = manifest_path;
  return s;
}

}  // namespace drdm
