#include "atomic_file.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <string>
#include <stdexcept>
#include <vector>

namespace drdm::detail {
namespace {

std::string dirname_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string basename_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::vector<std::string> list_files(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
  }
  return names;
}

void remove_flat_folder(const std::string& dir) {
  for (const auto& name : list_files(dir)) ::unlink((dir + "/" + name).c_str());
  ::rmdir(dir.c_str());
}

}  // namespace

void write_via_temporary(const std::string& path,
                         const std::function<void(const std::string&)>& write) {
  const std::string parent = dirname_of(path), name = basename_of(path);
  struct stat st {};
  if (name.empty()) throw std::runtime_error("'" + path + "': expected a file name");
  if (::stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw std::runtime_error("'" + path + "': output folder does not exist");
  static std::atomic<unsigned> counter{0};
  const std::string tmp = parent + "/.drdm-tmp-" + std::to_string(::getpid()) + "-" +
                          std::to_string(counter++);
  if (::mkdir(tmp.c_str(), 0700) != 0)
    throw std::runtime_error("'" + path + "': cannot create a temporary folder: " +
                             std::strerror(errno));
  try {
    write(tmp + "/" + name);
    auto files = list_files(tmp);
    // The target last, so that a header never points at a missing data file.
    std::stable_partition(files.begin(), files.end(), [&](const std::string& f) { return f != name; });
    for (const auto& f : files)
      if (::rename((tmp + "/" + f).c_str(), (parent + "/" + f).c_str()) != 0)
        throw std::runtime_error("'" + path + "': cannot move the finished file into place: " +
                                 std::strerror(errno));
  } catch (...) {
    remove_flat_folder(tmp);
    throw;
  }
  remove_flat_folder(tmp);
}

bool has_extension(const std::string& path, const std::string& ext) {
  std::string lower = path;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return lower.size() >= ext.size() && lower.compare(lower.size() - ext.size(), ext.size(), ext) == 0;
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_dirs(const std::string& path) {
  std::string partial;
  std::stringstream parts(path);
  std::string part;
  if (!path.empty() && path[0] == '/') partial = "/";
  while (std::getline(parts, part, '/')) {
    if (part.empty()) continue;
    partial += part + "/";
    if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
      throw std::runtime_error("cannot create folder '" + partial + "'");
  }
  if (!dir_exists(path)) throw std::runtime_error("cannot create folder '" + path + "'");
}

const char* const kExtensions[] = {".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png"};

/// (stem, extension) for a supported image file name, or ("", "").
std::pair<std::string, std::string> split_name(const std::string& name) {
  for (const char* ext : kExtensions)
    if (detail::has_extension(name, ext) && name.size() > std::string(ext).size())
      return {name.substr(0, name.size() - std::string(ext).size()), name.substr(name.size() - std::string(ext).size())};
  return {"", ""};
}

std::string base_name(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

/// Supported image files directly in `folder` (not hidden), sorted by name.
std::vector<std::string> list_images(const std::string& folder) {
  DIR* dir = ::opendir(folder.c_str());
  if (dir == nullptr) throw std::runtime_error("cannot read folder '" + folder + "'");
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;
    if (split_name(name).first.empty()) continue;
    if (detail::file_exists(join(folder, name))) names.push_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}


}  // namespace drdm::detail
