#include "io/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "drdm/core/interrupt.h"
#include "drdm/io/text_file.h"
#include "io/files.h"

namespace drdm::detail {
namespace {

constexpr const char* kTempPrefix = ".drdm-tmp-";

std::string dirname_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string basename_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::vector<std::string> folder_entries(const std::string& dir) {
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
  for (const auto& name : folder_entries(dir)) ::unlink((dir + "/" + name).c_str());
  ::rmdir(dir.c_str());
}

std::string system_error(const std::string& path, const std::string& what) {
  return "'" + path + "': " + what + ": " + std::strerror(errno);
}

// Temporary folders of writes in progress, for the second-signal handler,
// which may only use async-signal-safe calls: fixed slots, no allocation.
struct Slot {
  std::atomic<bool> used{false};
  std::atomic<bool> ready{false};
  char path[PATH_MAX];
};
Slot g_slots[64];

/// Removes the temporary folders of this process that are still registered
/// (a write in progress). Async-signal-safe: run by a second signal.
void remove_registered_temporaries() noexcept;

int register_temporary(const std::string& dir) {
  // A second SIGINT/SIGTERM removes the temporaries in flight (core/interrupt).
  static const bool hooked = (set_second_signal_cleanup(remove_registered_temporaries), true);
  (void)hooked;
  if (dir.size() >= PATH_MAX) return -1;
  for (int i = 0; i < 64; ++i) {
    bool expected = false;
    if (!g_slots[i].used.compare_exchange_strong(expected, true)) continue;
    std::memcpy(g_slots[i].path, dir.c_str(), dir.size() + 1);
    g_slots[i].ready = true;
    return i;
  }
  return -1;  // more than 64 writes at once: not cleaned on a second signal
}

void unregister_temporary(int slot) {
  if (slot < 0) return;
  g_slots[slot].ready = false;
  g_slots[slot].used = false;
}

// Removes a flat folder with system calls only (async-signal-safe).
void remove_folder_signal_safe(const char* dir) noexcept {
  const int fd = ::open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    alignas(8) char buffer[4096];
    long n;
    while ((n = ::syscall(SYS_getdents64, fd, buffer, sizeof buffer)) > 0) {
      for (long at = 0; at < n;) {
        // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name
        unsigned short reclen;
        std::memcpy(&reclen, buffer + at + 16, sizeof reclen);
        const char* name = buffer + at + 19;
        if (std::strcmp(name, ".") != 0 && std::strcmp(name, "..") != 0) ::unlinkat(fd, name, 0);
        at += reclen;
      }
    }
    ::close(fd);
  }
  ::rmdir(dir);
}

const std::string& host_name() {
  static const std::string name = [] {
    char buffer[256] = {};
    if (::gethostname(buffer, sizeof buffer - 1) != 0 || buffer[0] == '\0')
      return std::string("localhost");
    std::string h = buffer;
    std::replace(h.begin(), h.end(), '/', '_');
    return h;
  }();
  return name;
}

// True for <prefix><this host>-<pid>-<n> where no process <pid> exists.
bool is_stale_temporary(const std::string& name) {
  if (name.rfind(kTempPrefix, 0) != 0) return false;
  const std::string rest = name.substr(std::strlen(kTempPrefix));
  const auto last = rest.rfind('-');
  if (last == std::string::npos || last == 0) return false;
  const auto before = rest.rfind('-', last - 1);
  if (before == std::string::npos) return false;
  if (rest.substr(0, before) != host_name()) return false;
  const std::string pid_text = rest.substr(before + 1, last - before - 1);
  if (pid_text.empty() || pid_text.size() > 9 ||
      pid_text.find_first_not_of("0123456789") != std::string::npos)
    return false;
  const long pid = std::stol(pid_text);
  if (pid <= 0 || pid == ::getpid()) return false;
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

// Once per folder and process: removes the temporaries of dead processes.
void sweep_stale_temporaries(const std::string& folder) {
  static std::mutex mutex;
  static std::set<std::string> swept;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (!swept.insert(folder).second) return;
  }
  for (const auto& name : folder_entries(folder))
    if (is_stale_temporary(name) && dir_exists(folder + "/" + name))
      remove_flat_folder(folder + "/" + name);
}

void fsync_path(const std::string& path, const std::string& what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(system_error(what, "cannot open to sync"));
  if (::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    errno = e;
    throw std::runtime_error(system_error(what, "cannot sync to disk"));
  }
  ::close(fd);
}

// Writes all bytes to `path` (opened with O_CREAT | `mode_flag`), checking
// every write and the close; throws naming `what`.
void write_to_file(const std::string& path, int mode_flag, const void* data, size_t size,
                   const std::string& what, const char* failure) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | mode_flag, 0666);
  if (fd < 0) throw std::runtime_error(system_error(what, "cannot create"));
  const char* p = static_cast<const char*>(data);
  int error = 0;
  while (size > 0 && error == 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error = n < 0 ? errno : ENOSPC;
    } else {
      p += n;
      size -= static_cast<size_t>(n);
    }
  }
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error != 0) {
    errno = error;
    throw std::runtime_error(system_error(what, failure));
  }
}

// Moves the finished files into `parent`, the target `name` last.
void move_into_place(const std::string& tmp, const std::string& parent, const std::string& name,
                     const std::string& path) {
  auto files = folder_entries(tmp);
  std::stable_partition(files.begin(), files.end(),
                        [&](const std::string& f) { return f != name; });
  for (const auto& f : files) fsync_path(tmp + "/" + f, path);
  throw_if_interrupted();  // last chance to abandon the write
  for (const auto& f : files)
    if (::rename((tmp + "/" + f).c_str(), (parent + "/" + f).c_str()) != 0)
      throw std::runtime_error(system_error(path, "cannot move the finished file into place"));
  fsync_path(parent, path);
}

void remove_registered_temporaries() noexcept {
  for (auto& slot : g_slots)
    if (slot.ready) remove_folder_signal_safe(slot.path);
}

}  // namespace

namespace {
std::atomic<bool> g_this_process_writes{true};
}  // namespace

void set_this_process_writes(bool writes) { g_this_process_writes = writes; }

bool this_process_writes() { return g_this_process_writes; }

void write_via_temporary(const std::string& path,
                         const std::function<void(const std::string&)>& write) {
  if (!this_process_writes())
    return;  // a data-parallel job: rank 0 alone writes (docs/distributed.md)
  const std::string parent = dirname_of(path), name = basename_of(path);
  struct stat st {};
  if (name.empty()) throw std::runtime_error("'" + path + "': expected a file name");
  if (::stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw std::runtime_error("'" + path + "': output folder does not exist");
  throw_if_interrupted();
  sweep_stale_temporaries(parent);
  static std::atomic<unsigned> counter{0};
  const std::string tmp = parent + "/" + kTempPrefix + host_name() + "-" +
                          std::to_string(::getpid()) + "-" + std::to_string(counter++);
  const int slot = register_temporary(tmp);
  if (::mkdir(tmp.c_str(), 0700) != 0) {
    unregister_temporary(slot);
    throw std::runtime_error(system_error(path, "cannot create a temporary folder"));
  }
  try {
    write(tmp + "/" + name);
    move_into_place(tmp, parent, name, path);
  } catch (...) {
    remove_flat_folder(tmp);
    unregister_temporary(slot);
    throw;
  }
  remove_flat_folder(tmp);
  unregister_temporary(slot);
}

void write_file_checked(const std::string& path, const void* data, size_t size,
                        const std::string& what) {
  write_to_file(path, O_TRUNC, data, size, what, "cannot write");
}

void append_file_checked(const std::string& path, const std::string& text) {
  if (!this_process_writes()) return;
  write_to_file(path, O_APPEND, text.data(), text.size(), path, "cannot append");
}

void require_distinct(const std::string& output, const std::vector<std::string>& inputs) {
  struct stat out {};
  if (output.empty() || ::stat(output.c_str(), &out) != 0) return;  // a new file is no input
  for (const auto& input : inputs) {
    struct stat in {};
    if (input.empty() || ::stat(input.c_str(), &in) != 0) continue;
    if (in.st_dev == out.st_dev && in.st_ino == out.st_ino)
      throw std::invalid_argument("'" + output + "' is the input file '" + input +
                                  "': refusing to overwrite an input; choose another output name");
  }
}

void require_writable_output(const std::string& path, const std::string& option) {
  if (path.empty()) return;
  const std::string named = (option.empty() ? "" : option + " ") + "'" + path + "'";
  if (dir_exists(path)) throw std::invalid_argument(named + " is a folder, expected a file name");
  const std::string parent = dirname_of(path);
  if (!dir_exists(parent))
    throw std::invalid_argument(named + ": the output folder '" + parent + "' does not exist");
  if (::access(parent.c_str(), W_OK | X_OK) != 0)
    throw std::invalid_argument(named + ": the output folder '" + parent +
                                "' is not writable: " + std::strerror(errno));
}

}  // namespace drdm::detail

namespace drdm {

void write_text_atomically(const std::string& path, const std::string& text) {
  detail::write_via_temporary(path, [&](const std::string& tmp) {
    detail::write_file_checked(tmp, text.data(), text.size(), path);
  });
}

}  // namespace drdm
