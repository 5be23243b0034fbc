// Private writing helpers (src/io/atomic_file.h, src/io/write_check.h) and drdm/core/interrupt.h:
// complete-file checks against zlib's own gzip writer, output = input refusal, output
// locations, the sweep of dead processes' temporaries, and a write abandoned on SIGINT.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <csignal>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "drdm/core/interrupt.h"
#include "io/atomic_file.h"
#include "io/files.h"
#include "io/write_check.h"
#include "test_util.h"

namespace {

using drdm::test::TempDir;

std::vector<char> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A gzip file written by zlib itself (the independent truth).
std::string gzip_file(const TempDir& dir, const std::string& name) {
  const auto path = dir.path(name);
  gzFile f = gzopen(path.c_str(), "wb");
  std::string text;
  for (int i = 0; i < 20000; ++i) text += std::to_string(i * 7919 % 10007) + ",";
  gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
  gzclose(f);
  return path;
}

std::string host_name() {
  char buffer[256] = {};
  ::gethostname(buffer, sizeof buffer - 1);
  return buffer;
}

std::vector<std::string> entries(const std::string& folder) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(folder.c_str())) {
    while (const dirent* e = ::readdir(d))
      if (std::string(e->d_name) != "." && std::string(e->d_name) != "..")
        names.push_back(e->d_name);
    ::closedir(d);
  }
  return names;
}

pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
  return pid;
}

TEST(CompressedDataComplete, AcceptsAWholeGzipFile) {
  TempDir dir;
  EXPECT_NO_THROW(drdm::detail::check_compressed_data_complete(gzip_file(dir, "a.nii.gz")));
}

TEST(CompressedDataComplete, RefusesACutShortGzipFile) {
  TempDir dir;
  const auto path = gzip_file(dir, "a.nii.gz");
  const auto bytes = read_all(path);
  for (size_t cut : {1, 4, 8, 100}) {  // inside the trailer (length, CRC), then the data
    write_all(path, std::vector<char>(bytes.begin(), bytes.end() - static_cast<long>(cut)));
    EXPECT_THROW(drdm::detail::check_compressed_data_complete(path), std::runtime_error) << cut;
  }
}

TEST(CompressedDataComplete, RefusesAWrongCrc) {
  TempDir dir;
  const auto path = gzip_file(dir, "a.nii.gz");
  auto bytes = read_all(path);
  bytes[bytes.size() - 6] ^= 0x01;  // one bit of the CRC-32
  write_all(path, bytes);
  EXPECT_THROW(drdm::detail::check_compressed_data_complete(path), std::runtime_error);
}

TEST(RequireDistinct, RefusesTheSameFileUnderAnyName) {
  TempDir dir;
  const auto in = dir.path("in.nii.gz");
  write_all(in, {'x'});
  ASSERT_EQ(::symlink(in.c_str(), dir.path("link.nii.gz").c_str()), 0);
  ASSERT_EQ(::link(in.c_str(), dir.path("hard.nii.gz").c_str()), 0);
  for (const auto& out :
       {in, dir.dir() + "/./in.nii.gz", dir.path("link.nii.gz"), dir.path("hard.nii.gz")})
    EXPECT_THROW(drdm::detail::require_distinct(out, {"", in}), std::invalid_argument) << out;
  write_all(dir.path("other.nii.gz"), {'x'});
  EXPECT_NO_THROW(drdm::detail::require_distinct(dir.path("other.nii.gz"), {in}));
  EXPECT_NO_THROW(drdm::detail::require_distinct(dir.path("new.nii.gz"), {in}));
}

TEST(RequireWritableOutput, RefusesMissingFoldersAndFolders) {
  TempDir dir;
  EXPECT_THROW(drdm::detail::require_writable_output(dir.dir() + "/missing/o.nii.gz"),
               std::invalid_argument);
  EXPECT_THROW(drdm::detail::require_writable_output(dir.dir()), std::invalid_argument);
  EXPECT_NO_THROW(drdm::detail::require_writable_output(dir.dir() + "/o.nii.gz"));
}

TEST(WriteViaTemporary, SweepsTemporariesOfDeadProcessesOfThisHostOnly) {
  TempDir dir;
  const std::string dead =
      dir.path(".drdm-tmp-" + host_name() + "-" + std::to_string(dead_pid()) + "-0");
  const std::string live =
      dir.path(".drdm-tmp-" + host_name() + "-" + std::to_string(::getppid()) + "-0");
  const std::string other = dir.path(".drdm-tmp-elsewhere-" + std::to_string(dead_pid()) + "-0");
  for (const auto& d : {dead, live, other}) {
    ASSERT_EQ(::mkdir(d.c_str(), 0700), 0);
    write_all(d + "/partial.pt", {'x'});
  }
  drdm::detail::write_via_temporary(dir.path("out.txt"), [](const std::string& tmp) {
    drdm::detail::write_file_checked(tmp, "ok", 2, tmp);
  });
  EXPECT_FALSE(drdm::detail::dir_exists(dead));
  EXPECT_TRUE(drdm::detail::dir_exists(live));
  EXPECT_TRUE(drdm::detail::dir_exists(other));
  EXPECT_EQ(read_all(dir.path("out.txt")), (std::vector<char>{'o', 'k'}));
}

// In a child process: the interrupt flag stays set for the process's life.
TEST(WriteViaTemporary, AbandonsTheWriteAfterSigint) {
  TempDir dir;
  const auto out = dir.path("out.txt");
  const pid_t pid = ::fork();
  if (pid == 0) {
    drdm::install_interrupt_handlers();
    int code = 1;
    try {
      drdm::detail::write_via_temporary(out, [](const std::string& tmp) {
        drdm::detail::write_file_checked(tmp, "ok", 2, tmp);
        std::raise(SIGINT);  // arrives while the file is being written
      });
    } catch (const drdm::Interrupted& e) {
      code = e.signal() == SIGINT && std::string(e.what()) == "interrupted by SIGINT" ? 0 : 2;
    } catch (...) {
      code = 3;
    }
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(entries(dir.dir()), std::vector<std::string>{}) << "no output, no temporary folder";
}

}  // namespace
