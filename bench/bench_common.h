// Shared by the benchmark programs: common flags, timing, helpers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <numeric>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "drdm/core/runtime.h"

namespace drdm::bench {

/// Flags every benchmark program takes.
struct CommonOptions {
  std::string device = "all";  // cpu | cuda | all
  std::string ops = "all";     // comma-separated subset of the program's ops
  std::string out;             // empty: stdout
  std::string dump;            // directory: write cross-check data, then exit
  int case_index = -1;         // -1: all cases
  int threads = 0;             // 0: leave ATen's default
  double min_time_s = 0.5;
  int min_reps = 5;
  int max_reps = 1000;
  int warmup = 2;
  uint64_t seed = 1234;
  bool default_malloc = false;  // true: skip drdm::keep_freed_memory_for_reuse()
};

/// Parses flag `a` if it is a common one (value() fetches its argument and
/// may throw std::logic_error on a bad number); returns false otherwise.
inline bool parse_common_flag(const std::string& a, const std::function<std::string()>& value,
                              CommonOptions& o) {
  if (a == "--device")
    o.device = value();
  else if (a == "--ops")
    o.ops = value();
  else if (a == "--out")
    o.out = value();
  else if (a == "--dump")
    o.dump = value();
  else if (a == "--threads")
    o.threads = std::stoi(value());
  else if (a == "--case")
    o.case_index = std::stoi(value());
  else if (a == "--min-time")
    o.min_time_s = std::stod(value());
  else if (a == "--min-reps")
    o.min_reps = std::stoi(value());
  else if (a == "--max-reps")
    o.max_reps = std::stoi(value());
  else if (a == "--warmup")
    o.warmup = std::stoi(value());
  else if (a == "--seed")
    o.seed = std::stoull(value());
  else if (a == "--default-malloc")
    o.default_malloc = true;
  else if (a == "--rounds") {
    o.min_reps = o.max_reps = std::stoi(value());
    o.min_time_s = 0;
  } else {
    return false;
  }
  return true;
}

/// A program's own flags: name -> what to do with its value (may throw
/// std::logic_error, e.g. std::stoi on a bad number).
using OwnFlags = std::map<std::string, std::function<void(const std::string&)>>;

/// Common checks; false if the options are inconsistent.
inline bool common_options_valid(const CommonOptions& o) {
  return (o.device == "cpu" || o.device == "cuda" || o.device == "all") && o.min_reps >= 1 &&
         o.max_reps >= o.min_reps && o.warmup >= 0;
}

/// Parses argv into o: -h/--help calls usage(0); common flags, then the
/// program's `own` flags; an unknown flag, a missing value, a bad number or
/// inconsistent common options (common_options_valid) call usage(2). usage
/// must not return.
inline void parse_flags(int argc, char** argv, CommonOptions& o, const OwnFlags& own, void (*usage)(int)) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const std::function<std::string()> value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value after %s\n", a.c_str());
        usage(2);
      }
      return argv[++i];
    };
    try {
      if (a == "-h" || a == "--help") usage(0);
      if (parse_common_flag(a, value, o)) continue;
      const auto it = own.find(a);
      if (it != own.end()) {
        it->second(value());
        continue;
      }
      std::fprintf(stderr, "unknown argument: %s\n", a.c_str());
      usage(2);
    } catch (const std::logic_error&) {  // stoi/stod on a bad number
      std::fprintf(stderr, "bad value for %s\n", a.c_str());
      usage(2);
    }
  }
  if (!common_options_valid(o)) usage(2);
}

inline bool wanted(const std::string& list, const std::string& op) {
  if (list == "all") return true;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ','))
    if (item == op) return true;
  return false;
}

inline std::string size_string(const std::vector<int64_t>& size) {
  std::string s;
  for (size_t i = 0; i < size.size(); ++i) s += (i ? "x" : "") + std::to_string(size[i]);
  return s;
}

/// The devices --device asks for: "cpu", "cuda" or both (CUDA only when present).
/// Returns false (after a message) when CUDA alone is asked for but absent.
inline bool requested_devices(const CommonOptions& o, const char* program, std::vector<std::string>& devices) {
  devices.clear();
  if (o.device == "cpu" || o.device == "all") devices.push_back("cpu");
  if (o.device == "cuda" || o.device == "all") {
    if (at::hasCUDA()) {
      devices.push_back("cuda");
    } else if (o.device == "cuda") {
      std::fprintf(stderr, "%s: --device cuda but CUDA is not available\n", program);
      return false;
    }
  }
  return true;
}

/// Opens --out (or stands for stdout when it is empty); false after a message if it cannot.
inline bool open_output(const CommonOptions& o, const char* program, std::ofstream& file) {
  if (o.out.empty()) return true;
  file.open(o.out);
  if (!file) {
    std::fprintf(stderr, "%s: cannot open %s\n", program, o.out.c_str());
    return false;
  }
  return true;
}

/// What a program's main sets up from the common flags: the allocator as the
/// programs ship (drdm::keep_freed_memory_for_reuse() unless --default-malloc),
/// ATen's threads (--threads), the devices (--device) and the output (--out).
struct Session {
  std::vector<std::string> devices;
  std::ofstream file;
  std::ostream& out() { return file.is_open() ? static_cast<std::ostream&>(file) : std::cout; }
};

/// Sets up `s` for `program`; false after a message when CUDA alone is asked
/// for but absent or --out cannot be opened.
inline bool start_session(const CommonOptions& o, const char* program, Session& s) {
  if (!o.default_malloc) drdm::keep_freed_memory_for_reuse();
  if (o.threads > 0) at::set_num_threads(o.threads);
  return requested_devices(o, program, s.devices) && open_output(o, program, s.file);
}

/// Forces completion of all queued work that produced `t` (CUDA launches are
/// asynchronous; copying one element to the host waits for the stream).
inline void sync(const at::Tensor& t) {
  if (t.is_cuda()) (void)t.reshape(-1)[0].item<float>();
}

struct Timing {
  double median_ms, mean_ms, min_ms;
  int reps;
};

/// Times `op(i)` (i counts calls, warm-up included) after o.warmup calls:
/// at least min_reps calls and min_time_s seconds, at most max_reps calls.
/// cycle > 1: the number of timed calls is rounded up to a multiple of it.
inline Timing time_op(const std::function<at::Tensor(int)>& op, const CommonOptions& o,
                      int cycle = 1) {
  int call = 0;
  for (int i = 0; i < o.warmup; ++i) sync(op(call++));
  using clock = std::chrono::steady_clock;
  std::vector<double> ms;
  const auto start = clock::now();
  while (true) {
    const auto t0 = clock::now();
    sync(op(call++));
    const auto t1 = clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    const double total = std::chrono::duration<double>(t1 - start).count();
    const int reps = static_cast<int>(ms.size());
    const bool whole = reps % cycle == 0;
    if (whole &&
        (reps >= std::max(o.max_reps, cycle) || (reps >= o.min_reps && total >= o.min_time_s)))
      break;
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  const double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  const double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / static_cast<double>(n);
  return {median, mean, sorted.front(), static_cast<int>(n)};
}

/// One result row as a JSON object: impl "libdrdm", op, dims, size, batch,
/// device, threads, ms (= the median) and the timing, then `extra` (", \"key\": value"...).
inline std::string result_row(const std::string& op, const std::vector<int64_t>& size,
                              int64_t batch, const std::string& device, const Timing& t,
                              const std::string& extra) {
  char nums[256];
  std::snprintf(nums, sizeof nums,
                ", \"threads\": %d, \"ms\": %.4f, \"median_ms\": %.4f, \"mean_ms\": %.4f, "
                "\"min_ms\": %.4f, \"reps\": %d",
                at::get_num_threads(), t.median_ms, t.median_ms, t.mean_ms, t.min_ms, t.reps);
  return "{\"impl\": \"libdrdm\", \"op\": \"" + op +
         "\", \"dims\": " + std::to_string(size.size()) + ", \"size\": \"" + size_string(size) +
         "\", \"batch\": " + std::to_string(batch) + ", \"device\": \"" + device + "\"" + nums +
         extra + "}";
}

/// Writes a row to `out` (stdout, or the --out file; then also echoed to stderr).
inline void emit_row(std::ostream& out, const CommonOptions& o, const std::string& row) {
  out << row << std::endl;
  if (!o.out.empty()) std::fprintf(stderr, "%s\n", row.c_str());
}

/// Parameter shapes by name as a JSON object: {"name": [d0, d1, ...], ...}.
inline std::string shapes_json(const std::map<std::string, at::Tensor>& state) {
  std::string s = "{";
  for (const auto& [k, v] : state) {
    s += (s.size() > 1 ? ", \"" : "\"") + k + "\": [";
    for (int64_t i = 0; i < v.dim(); ++i) s += (i ? ", " : "") + std::to_string(v.size(i));
    s += "]";
  }
  return s + "}";
}

}  // namespace drdm::bench
