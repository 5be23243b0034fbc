// Plain fuzz driver, built with the project's compiler (ASan + UBSan in the
// DRDM_SANITIZE build): runs every input file through a target, then
// `--mutations N` seeded random mutations of each (bit flips, interesting
// bytes and integers, truncation, cut and repeated chunks).
//   drdm_fuzz_replay TARGET [--mutations N] [--seed S] FILE_OR_DIR...
// A finding aborts with the input that caused it saved as ./fuzz-crash-TARGET.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "fuzz_targets.h"

namespace {

using Bytes = std::string;

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + path + "'");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Files named on the command line, and the files (sorted) of named folders.
std::vector<std::string> list_inputs(const std::vector<std::string>& args) {
  std::vector<std::string> files;
  for (const auto& a : args) {
    struct stat st {};
    if (stat(a.c_str(), &st) != 0) throw std::runtime_error("no such file or folder '" + a + "'");
    if (!S_ISDIR(st.st_mode)) {
      files.push_back(a);
      continue;
    }
    std::vector<std::string> inside;
    if (DIR* d = opendir(a.c_str())) {
      while (const dirent* e = readdir(d))
        if (e->d_name[0] != '.') inside.push_back(a + "/" + e->d_name);
      closedir(d);
    }
    std::sort(inside.begin(), inside.end());
    files.insert(files.end(), inside.begin(), inside.end());
  }
  return files;
}

Bytes mutate(Bytes b, std::mt19937_64& rng) {
  auto pick = [&](uint64_t n) { return n == 0 ? 0 : static_cast<size_t>(rng() % n); };
  static const int64_t kInts[] = {
      0, 1, -1, 2, 255, 256, 65535, 0x7fffffff, -0x80000000LL, 0x40000000, 1 << 20};
  static const uint8_t kBytes[] = {0, 1, 0x7f, 0x80, 0xff, '0', '9', '-', ' ', '\n', '=', '.'};
  const int ops = 1 + static_cast<int>(pick(4));
  for (int i = 0; i < ops; ++i) {
    switch (pick(b.empty() ? 1 : 7)) {
      case 0:  // insert a byte
        b.insert(b.begin() + static_cast<long>(pick(b.size() + 1)),
                 static_cast<char>(kBytes[pick(std::size(kBytes))]));
        break;
      case 1:
        b[pick(b.size())] ^= static_cast<char>(1u << pick(8));
        break;
      case 2:
        b[pick(b.size())] = static_cast<char>(kBytes[pick(std::size(kBytes))]);
        break;
      case 3: {  // an interesting 2/4/8-byte integer
        const size_t width = size_t{2} << pick(3);
        if (b.size() < width) break;
        const int64_t v = kInts[pick(std::size(kInts))];
        std::memcpy(&b[pick(b.size() - width + 1)], &v, width);
        break;
      }
      case 4:
        b.resize(pick(b.size()));
        break;   // truncate
      case 5: {  // cut a chunk
        const size_t at = pick(b.size()), n = 1 + pick(std::min<size_t>(64, b.size() - at));
        b.erase(at, n);
        break;
      }
      default: {  // repeat a chunk
        const size_t at = pick(b.size()), n = 1 + pick(std::min<size_t>(64, b.size() - at));
        b.insert(pick(b.size() + 1), b.substr(at, n));
      }
    }
  }
  return b;
}

void run(const std::string& target, const Bytes& input) {
  // Saved first: a finding aborts the process, the input stays behind.
  const std::string crash = "fuzz-crash-" + target;
  std::ofstream(crash, std::ios::binary) << input;
  drdm::fuzz::run_target(target, reinterpret_cast<const uint8_t*>(input.data()), input.size());
  std::remove(crash.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 3)
      throw std::runtime_error(
          "usage: drdm_fuzz_replay TARGET [--mutations N] [--seed S] FILE_OR_DIR...");
    const std::string target = argv[1];
    long mutations = 0;
    uint64_t seed = 1;
    std::vector<std::string> paths;
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--mutations" && i + 1 < argc) {
        mutations = std::stol(argv[++i]);
      } else if (a == "--seed" && i + 1 < argc) {
        seed = std::stoull(argv[++i]);
      } else {
        paths.push_back(a);
      }
    }
    const auto files = list_inputs(paths);
    if (files.empty()) throw std::runtime_error("no input files");
    std::mt19937_64 rng(seed);
    long runs = 0;
    for (const auto& f : files) {
      const Bytes seed_input = read_file(f);
      run(target, seed_input);
      ++runs;
      for (long m = 0; m < mutations; ++m, ++runs) run(target, mutate(seed_input, rng));
    }
    std::cout << "drdm_fuzz_replay " << target << ": " << files.size() << " input(s), " << runs
              << " run(s), no findings\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "drdm_fuzz_replay: " << e.what() << "\n";
    return 2;
  }
}
