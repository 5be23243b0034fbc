// Shared by the benchmark programs: common flags, timing, result rows and the
// harness (run_benchmark) that owns each program's main: the command line,
// the devices, the output and the loop over cases. A program declares its
// cases and what one case on one device times (a Benchmark).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <numeric>
#include <ostream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
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

/// Prints `usage` (on stdout for 0, else on stderr) and exits with rc.
[[noreturn]] inline void usage_exit(const char* usage, int rc) {
  std::fputs(usage, rc ? stderr : stdout);
  std::exit(rc);
}

/// Parses argv into o: -h/--help prints `usage` and exits 0; common flags, then the
/// program's `own` flags (a flag named in `many` takes every following
/// argument up to the next "--" one, each passed on by itself); an unknown
/// flag, a missing value, a bad number or inconsistent common options
/// (common_options_valid) print `usage` and exit 2.
inline void parse_flags(int argc, char** argv, CommonOptions& o, const OwnFlags& own,
                        const char* usage, const std::set<std::string>& many = {}) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const std::function<std::string()> value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value after %s\n", a.c_str());
        usage_exit(usage, 2);
      }
      return argv[++i];
    };
    try {
      if (a == "-h" || a == "--help") usage_exit(usage, 0);
      if (parse_common_flag(a, value, o)) continue;
      const auto it = own.find(a);
      if (it != own.end() && many.count(a)) {
        while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) it->second(argv[++i]);
      } else if (it != own.end()) {
        it->second(value());
      } else {
        std::fprintf(stderr, "unknown argument: %s\n", a.c_str());
        usage_exit(usage, 2);
      }
    } catch (const std::logic_error&) {  // stoi/stod on a bad number
      std::fprintf(stderr, "bad value for %s\n", a.c_str());
      usage_exit(usage, 2);
    }
  }
  if (!common_options_valid(o)) usage_exit(usage, 2);
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

/// A benchmark case: the spatial size (2 or 3 entries) and the batch.
struct Case {
  std::vector<int64_t> size;
  int64_t batch = 1;
};

/// The devices --device asks for: "cpu", "cuda" or both (CUDA only when present).
/// Returns false (after a message) when CUDA alone is asked for but absent.
inline bool requested_devices(const CommonOptions& o, const char* program,
                              std::vector<std::string>& devices) {
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

/// One result row: impl, op, dims (= size.size()), size, batch, device,
/// threads, then `before_timing`, the timing and `extra` (each ", \"key\": value"...).
struct Row {
  std::string impl = "libdrdm";
  std::string op;
  std::vector<int64_t> size;
  int64_t batch = 1;
  std::string device = "cpu";
  std::string before_timing;  // e.g. drdm_bench_generate's ", \"level\": 45"
  double ms = -1;             // the row's "ms"; < 0: the median
  bool brief = false;         // only median_ms, min_ms and reps (drdm_bench_spatial's rows)
  std::string extra;
};

/// `r` with the timing `t` as one JSON object (the schema the peers print too).
inline std::string row_json(const Row& r, const Timing& t) {
  char nums[256];
  if (r.brief)
    std::snprintf(nums, sizeof nums, ", \"median_ms\": %.4f, \"min_ms\": %.4f, \"reps\": %d",
                  t.median_ms, t.min_ms, t.reps);
  else
    std::snprintf(nums, sizeof nums,
                  ", \"ms\": %.4f, \"median_ms\": %.4f, \"mean_ms\": %.4f, \"min_ms\": %.4f, "
                  "\"reps\": %d",
                  r.ms < 0 ? t.median_ms : r.ms, t.median_ms, t.mean_ms, t.min_ms, t.reps);
  return "{\"impl\": \"" + r.impl + "\", \"op\": \"" + r.op +
         "\", \"dims\": " + std::to_string(r.size.size()) + ", \"size\": \"" + size_string(r.size) +
         "\", \"batch\": " + std::to_string(r.batch) + ", \"device\": \"" + r.device +
         "\", \"threads\": " + std::to_string(at::get_num_threads()) + r.before_timing + nums +
         r.extra + "}";
}

/// A row of impl "libdrdm" with the full timing (ms = the median) and `extra`.
inline std::string result_row(const std::string& op, const std::vector<int64_t>& size,
                              int64_t batch, const std::string& device, const Timing& t,
                              const std::string& extra) {
  Row r;
  r.op = op;
  r.size = size;
  r.batch = batch;
  r.device = device;
  r.extra = extra;
  return row_json(r, t);
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

// ---------------------------------------------------------------- the harness

/// One case on one device, as the harness hands it to a program: where its
/// rows go (stdout, or the --out file and then also stderr).
struct CaseRun {
  std::string device;  // "cpu" | "cuda"
  size_t index;        // the case, 0-based
  std::ostream& out;
  bool echo;  // --out given: rows are echoed to stderr

  at::Device at_device() const { return at::Device(device == "cuda" ? at::kCUDA : at::kCPU); }
  void emit(const std::string& row) const {
    out << row << std::endl;
    if (echo) std::fprintf(stderr, "%s\n", row.c_str());
  }
  /// `r` on this run's device with the timing `t`.
  void emit(Row r, const Timing& t) const {
    r.device = device;
    emit(row_json(r, t));
  }
};

/// What a benchmark program declares; run_benchmark owns the rest: the
/// command line, the allocator and threads, the devices, the output and the
/// loop over (device, case).
struct Benchmark {
  Benchmark(const char* program, const char* usage, std::function<size_t()> cases,
            std::function<void(const CaseRun&)> run)
      : program(program), usage(usage), cases(std::move(cases)), run(std::move(run)) {}

  /// For messages: "drdm_bench_io".
  const char* program;
  /// What -h prints, and what a bad command line prints on stderr before exit 2.
  const char* usage;
  /// How many cases there are (called after parsing).
  std::function<size_t()> cases;
  /// Times one case on one device and emits its rows.
  std::function<void(const CaseRun&)> run;
  /// The program's own flags, and those of them that take several values (parse_flags).
  OwnFlags flags;
  std::set<std::string> many;
  /// The program's checks after parsing (optional); false: usage, exit 2.
  std::function<bool()> valid;
  /// Optional, before the cases (--dump): true = done, exit 0 without timing.
  std::function<bool()> before;
  /// false: every case once, on the CPU (--device is only checked).
  bool per_device = true;
};

/// Sets up the process as the libdrdm programs ship: drdm::keep_freed_memory_for_reuse()
/// unless --default-malloc, and ATen's threads (--threads).
inline void prepare_process(const CommonOptions& o) {
  if (!o.default_malloc) drdm::keep_freed_memory_for_reuse();
  if (o.threads > 0) at::set_num_threads(o.threads);
}

/// Runs b.run for every selected case (--case) on every device (--device),
/// devices outer; 1 after a message when the devices or output are not there.
inline int run_cases(const CommonOptions& o, const Benchmark& b) {
  std::vector<std::string> devices;
  std::ofstream file;
  if (!requested_devices(o, b.program, devices) || !open_output(o, b.program, file)) return 1;
  if (!b.per_device) devices = {"cpu"};
  std::ostream& out = file.is_open() ? static_cast<std::ostream&>(file) : std::cout;
  const size_t n = b.cases();
  for (const auto& dev : devices)
    for (size_t ci = 0; ci < n; ++ci)
      if (o.case_index < 0 || static_cast<size_t>(o.case_index) == ci)
        b.run(CaseRun{dev, ci, out, !o.out.empty()});
  return 0;
}

/// A benchmark program's main: parses argv into o (common flags and b.flags),
/// checks it, prepares the process, runs b.before, then the cases. Returns
/// the exit status (1 after a message on an error).
inline int run_benchmark(int argc, char** argv, CommonOptions& o, const Benchmark& b) {
  parse_flags(argc, argv, o, b.flags, b.usage, b.many);
  if (b.valid && !b.valid()) usage_exit(b.usage, 2);
  if (o.case_index >= static_cast<int>(b.cases())) {
    std::fprintf(stderr, "%s: --case %d, but the cases are 0 to %zu\n", b.program, o.case_index,
                 b.cases() - 1);
    usage_exit(b.usage, 2);
  }
  try {
    prepare_process(o);
    if (b.before && b.before()) return 0;
    return run_cases(o, b);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", b.program, e.what());
    return 1;
  }
}

}  // namespace drdm::bench
