// Private: file and folder names, and what is in a folder, for every reader and writer in the
// library.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace drdm::detail {

/// True if `path` is a regular file / a folder (following links).
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);

/// mkdir -p; throws std::runtime_error naming the folder that cannot be made.
void make_dirs(const std::string& path);

/// True if `path` ends with `ext` (e.g. ".nii.gz"), ignoring case.
bool has_extension(const std::string& path, const std::string& ext);

/// (stem, extension) for a supported image file name (.nii.gz, .nii, .mha,
/// .mhd, .nrrd, .nhdr, .png), or ("", "").
std::pair<std::string, std::string> split_name(const std::string& name);
/// The last component of a path.
std::string base_name(const std::string& path);
/// a/b, without doubling the slash.
std::string join(const std::string& a, const std::string& b);

/// Regular files directly in `folder` (not hidden, links followed) whose
/// name `keep` accepts (all when `keep` is empty), sorted by name. Throws
/// std::runtime_error naming the folder when it cannot be read, and naming
/// a kept name that is a link to nothing (a listing would drop it silently).
std::vector<std::string> list_files(const std::string& folder,
                                    const std::function<bool(const std::string&)>& keep = {});
/// The supported image files in `folder` (see split_name): list_files with
/// that filter.
std::vector<std::string> list_images(const std::string& folder);

}  // namespace drdm::detail
