#include "io/files.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <sstream>
#include <stdexcept>

#include "io/input_checks.h"

namespace drdm::detail {

bool has_extension(const std::string& path, const std::string& ext) {
  std::string lower = path;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return lower.size() >= ext.size() &&
         lower.compare(lower.size() - ext.size(), ext.size(), ext) == 0;
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

namespace {

const char* const kExtensions[] = {".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png"};

}  // namespace

std::pair<std::string, std::string> split_name(const std::string& name) {
  for (const char* ext : kExtensions)
    if (has_extension(name, ext) && name.size() > std::string(ext).size())
      return {name.substr(0, name.size() - std::string(ext).size()),
              name.substr(name.size() - std::string(ext).size())};
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

std::vector<std::string> list_files(const std::string& folder,
                                    const std::function<bool(const std::string&)>& keep) {
  DIR* dir = ::opendir(folder.c_str());
  if (dir == nullptr) throw std::runtime_error("cannot read folder '" + folder + "'");
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;
    if (keep && !keep(name)) continue;
    try {
      require_not_dangling(join(folder, name));  // a broken link would drop a file silently
    } catch (...) {
      ::closedir(dir);
      throw;
    }
    if (file_exists(join(folder, name))) names.push_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string> list_images(const std::string& folder) {
  return list_files(folder,
                    [](const std::string& name) { return !split_name(name).first.empty(); });
}

}  // namespace drdm::detail
