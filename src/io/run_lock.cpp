#include "io/run_lock.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "drdm/core/log.h"
#include "io/files.h"

namespace drdm::detail {
namespace {

std::string holder_text(const std::string& program, bool shared) {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "?");
  return program + (shared ? " (a share of the folder)" : "") + ", pid " +
         std::to_string(::getpid()) + " on " + host + "\n";
}

/// What a lock file says about its holder ("" when it says nothing).
std::string read_holder(int fd) {
  char buf[512] = {};
  const auto n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string s(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

void write_holder(int fd, const std::string& text) {
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, text.data(), text.size(), 0) < 0)
    log::warn("cannot record the holder in a lock file: " + std::string(std::strerror(errno)));
}

bool same_file(int fd, const std::string& path) {
  struct stat a {
  }, b{};
  return ::fstat(fd, &a) == 0 && ::stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

/// The recorded holder, unless it is a process of this host that has exited: the shares of a
/// sharded job record themselves in turn, and the last one may be done while others run on.
std::string live_holder(const std::string& holder) {
  const auto at = holder.find(", pid "), on = holder.rfind(" on ");
  if (at == std::string::npos || on == std::string::npos || on < at) return holder;
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0 || holder.substr(on + 4) != host) return holder;
  const long pid = std::strtol(holder.c_str() + at + 6, nullptr, 10);
  if (pid <= 0 || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) return holder;
  return "another share of a sharded job; the share last recorded, " + holder + ", has exited";
}

[[noreturn]] void refuse(const std::string& folder, const std::string& path,
                         const std::string& holder) {
  throw std::runtime_error(
      "output folder '" + folder + "' is in use by another run" +
      (holder.empty() ? std::string() : " (" + holder + ")") +
      ": two runs must not write into one folder. Wait for it to finish or choose "
      "another output folder (lock file '" +
      path + "')");
}

/// Opens `path` and takes flock(operation) without waiting. Returns the
/// descriptor; -1 when locks are not supported there; throws when another
/// process holds the lock.
int lock_file(const std::string& folder, const std::string& path, int operation) {
  for (int attempt = 0; attempt < 16; ++attempt) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
      throw std::runtime_error("cannot create the lock file '" + path +
                               "': " + std::strerror(errno));
    if (::flock(fd, operation | LOCK_NB) != 0) {
      const int err = errno;
      const std::string holder = err == EWOULDBLOCK ? read_holder(fd) : "";
      ::close(fd);
      if (err == EWOULDBLOCK) refuse(folder, path, live_holder(holder));
      if (err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS) {
        log::warn("'" + folder + "': this file system does not support locks (" +
                  std::strerror(err) +
                  "); nothing stops another run from writing into the same folder");
        return -1;
      }
      throw std::runtime_error("cannot lock '" + path + "': " + std::strerror(err));
    }
    // A previous holder may have removed the file between our open and
    // flock: then we hold a lock on a file nobody else will see. Retry.
    if (same_file(fd, path)) return fd;
    ::close(fd);
  }
  throw std::runtime_error("cannot lock '" + path + "': it keeps being replaced");
}

/// The folders of `path` (itself and its parents) that do not exist yet, outermost first.
std::vector<std::string> missing_folders(const std::string& path) {
  std::vector<std::string> missing;
  for (std::string p = path; !p.empty() && p != "/" && p != "." && !dir_exists(p);) {
    missing.insert(missing.begin(), p);
    const auto slash = p.find_last_of('/', p.size() - (p.back() == '/' ? 2 : 1));
    p = slash == std::string::npos ? "" : p.substr(0, slash);
  }
  return missing;
}

}  // namespace

RunLock::RunLock(const std::string& folder, const std::string& program, const std::string& share)
    : folder_(folder), shared_(!share.empty()) {
  created_ = missing_folders(folder);
  make_dirs(folder);
  try {
    const auto path = join(folder, kRunLockFile);
    fd_ = lock_file(folder, path, shared_ ? LOCK_SH : LOCK_EX);
    if (fd_ >= 0) write_holder(fd_, holder_text(program, shared_));
    if (shared_ && fd_ >= 0) {
      share_path_ = join(folder, ".drdm-" + share + ".lock");
      share_fd_ = lock_file(folder, share_path_, LOCK_EX);
      if (share_fd_ >= 0) write_holder(share_fd_, holder_text(program, false));
    }
  } catch (...) {
    release();
    throw;
  }
}

RunLock::~RunLock() { release(); }

void RunLock::release() {
  if (share_fd_ >= 0) {
    ::unlink(share_path_.c_str());
    ::close(share_fd_);
    share_fd_ = -1;
  }
  if (fd_ >= 0) {
    // Shares remove the common lock file only when no other share holds it.
    if (!shared_ || ::flock(fd_, LOCK_EX | LOCK_NB) == 0)
      ::unlink(join(folder_, kRunLockFile).c_str());
    ::close(fd_);
    fd_ = -1;
  }
  // Folders this lock made go again when the run wrote nothing into them.
  for (auto f = created_.rbegin(); f != created_.rend(); ++f) ::rmdir(f->c_str());
  created_.clear();
}

}  // namespace drdm::detail
