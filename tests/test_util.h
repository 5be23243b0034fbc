// Helpers shared by the GoogleTest suites.
#pragma once

#include <ATen/ATen.h>
#include <ftw.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace drdm::test {

/// [1, 1, ...size] float image whose values are the linear voxel index:
/// strictly increasing and asymmetric, so any axis mix-up shows.
inline at::Tensor ramp_image(at::IntArrayRef size) {
  std::vector<int64_t> shape{1, 1};
  shape.insert(shape.end(), size.begin(), size.end());
  int64_t n = 1;
  for (auto s : size) n *= s;
  return at::arange(n, at::kFloat).view(shape);
}

namespace detail {
inline int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  return ::remove(path);
}
}  // namespace detail

/// A fresh folder per test, removed afterwards with POSIX calls (not
/// std::filesystem::remove_all, which crashes with the PyPI LibTorch's
/// exported copy of std::filesystem).
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "drdm-test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
  }
  ~TempDir() { ::nftw(dir_.c_str(), detail::remove_entry, 16, FTW_DEPTH | FTW_PHYS); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  /// dir/rel, creating its parent folders.
  std::string path(const std::string& rel) const {
    const auto p = std::filesystem::path(dir_) / rel;
    std::filesystem::create_directories(p.parent_path());
    return p.string();
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

}  // namespace drdm::test
