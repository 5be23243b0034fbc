// Private: atomic output files and file-name helpers, shared by every writer in the library.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace drdm::detail {

/// Calls write(tmp) where tmp carries the target's file name inside a fresh
/// temporary folder beside the target, then moves every file the writer made
/// there next to the target (the target itself last: a .mhd header after its
/// data file) and removes the folder. On any exception the folder is removed
/// and the exception propagates; nothing half-written is ever visible.
/// Throws std::runtime_error naming `path` when the folder is missing or a
/// move fails.
///
/// Uses POSIX calls, not std::filesystem: the PyPI LibTorch exports its own
/// (GCC 13) std::filesystem symbols, which interpose on the system's and
/// crash in remove_all on GCC 12's libstdc++.
void write_via_temporary(const std::string& path, const std::function<void(const std::string&)>& write);

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
/// Supported image files directly in `folder` (not hidden), sorted by name;
/// throws std::runtime_error naming the folder when it cannot be read.
std::vector<std::string> list_images(const std::string& folder);

}  // namespace drdm::detail
