// Private: a lock on a run's output folder, so that two runs never write into
// one folder (their files and records would mix and be lost).
#pragma once

#include <string>
#include <vector>

namespace drdm::detail {

/// The lock file in a locked output folder. It is removed when the run ends;
/// one left behind by a killed run is harmless (the kernel released its lock
/// with the process) and is reused by the next run.
inline constexpr const char* kRunLockFile = ".drdm.lock";

/// Holds flock() on FOLDER/.drdm.lock for its lifetime: exclusively, or,
/// with a `share` name (e.g. "shard-0-of-4" for job arrays that write one
/// folder together), shared with other shares plus exclusively on
/// FOLDER/.drdm-<share>.lock. The lock files hold the holder's program, PID
/// and host. Creates FOLDER (mkdir -p) when missing, and removes what it made
/// again when it is still empty at the end (a run that failed before writing
/// leaves no folder behind). POSIX only.
class RunLock {
 public:
  /// Throws std::runtime_error naming the folder (and the holder) when
  /// another run holds it, or when the folder cannot be made.
  RunLock(const std::string& folder, const std::string& program, const std::string& share = {});
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  void release();

  std::string folder_;
  std::vector<std::string> created_;  ///< folders the constructor made, outermost first
  int fd_ = -1;                       ///< FOLDER/.drdm.lock
  bool shared_ = false;
  int share_fd_ = -1;  ///< FOLDER/.drdm-<share>.lock
  std::string share_path_;
};

}  // namespace drdm::detail
