// Private: atomic output files, shared by every writer in the library (file and folder names:
// io/files.h).
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace drdm::detail {

/// Calls write(tmp) where tmp carries the target's file name inside a fresh
/// temporary folder beside the target (.drdm-tmp-<host>-<pid>-<n>), then
/// fsyncs every file the writer made there, moves them next to the target
/// (the target itself last: a .mhd header after its data file), fsyncs the
/// folder and removes the temporary one. On any exception, and when a
/// SIGINT/SIGTERM arrived before the move (see drdm/core/interrupt.h), the
/// temporary folder is removed and the exception propagates; nothing
/// half-written is ever visible. The first write into a folder also removes
/// the temporary folders there that dead processes of this host left behind.
/// Throws std::runtime_error naming `path` when the folder is missing, a
/// file cannot be synced or a move fails.
///
/// In a data-parallel job (drdm/engine/distributed.h) only rank 0 writes: on the
/// other ranks this and append_file_checked return without writing.
///
/// Uses POSIX calls, not std::filesystem: the PyPI LibTorch exports its own
/// (GCC 13) std::filesystem symbols, which interpose on the system's and
/// crash in remove_all on GCC 12's libstdc++.
void write_via_temporary(const std::string& path,
                         const std::function<void(const std::string&)>& write);

/// Writes `size` bytes to a new file `path` (created or truncated) with
/// checked POSIX writes and close. Throws std::runtime_error naming `what`
/// (the file the user asked for) and the system's reason, e.g. a full disk.
void write_file_checked(const std::string& path, const void* data, size_t size,
                        const std::string& what);
/// Appends `text` to `path` (created if missing), checked and fsynced.
void append_file_checked(const std::string& path, const std::string& text);

/// Refuses an output that is one of the inputs: throws std::invalid_argument
/// naming both when `output` exists and is the same file (device and inode,
/// after following links) as an existing input. Empty names are skipped.
void require_distinct(const std::string& output, const std::vector<std::string>& inputs);

/// Checks, before any work, that `path` can be written: its folder exists
/// and is writable, and `path` is not a folder. Throws
/// std::invalid_argument naming `path` (and `option`, when given).
void require_writable_output(const std::string& path, const std::string& option = "");

/// In a data-parallel job rank 0 alone writes files (docs/distributed.md):
/// the engine's distributed layer turns writing off on the other ranks, and
/// write_via_temporary and append_file_checked then do nothing.
void set_this_process_writes(bool writes);
bool this_process_writes();

}  // namespace drdm::detail
