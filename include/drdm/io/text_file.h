/// @file Writing a text file atomically (manifests, configs, results).
#pragma once

#include <string>

namespace drdm {

/// Writes `text` to `path` atomically: into a temporary file beside it,
/// synced, then renamed, so that a reader never sees half a file. In a
/// data-parallel job only rank 0 writes. Throws std::runtime_error naming
/// the file and the system's reason (e.g. a full disk, a missing folder).
void write_text_atomically(const std::string& path, const std::string& text);

}  // namespace drdm
