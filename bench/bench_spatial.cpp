// Throughput of libdrdm's spatial core: warp, compose, compose_power and
// scaling-and-squaring integration, on CPU and (when present) CUDA.
//
// Prints one JSON object per (op, size, batch, device) on stdout or to
// --out FILE. bench/peer_spatial.py measures the same operations written with
// PyTorch ops in Python and prints the same schema; bench/run.py joins the two.
//
// Inputs are drawn with the global ATen CPU generator seeded per case, in the
// same order as the Python peer, so both programs time the same tensors.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/types.h>

#include "drdm/runtime.h"
#include "drdm/spatial.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Case {
  std::vector<int64_t> size;  // spatial size, 2 or 3 entries
  int64_t batch;
};

struct Options {
  std::string device = "all";  // cpu | cuda | all
  std::string sizes = "quick";  // quick | full
  std::string ops = "all";      // comma-separated subset of warp,compose,compose_power,integrate_ss
  std::string out;              // empty: stdout
  std::string dump;             // directory: write deterministic results for a cross-check, then exit
  int case_index = -1;          // -1: all cases of --sizes; else only this one
  int threads = 0;              // 0: leave ATen's default
  double min_time_s = 0.5;
  int min_reps = 5;
  int max_reps = 1000;
  int warmup = 2;
  uint64_t seed = 1234;
  bool default_malloc = false;  // true: skip drdm::keep_freed_memory_for_reuse()
};

[[noreturn]] void usage(int rc) {
  std::fprintf(rc ? stderr : stdout,
               "usage: drdm_bench_spatial [--device cpu|cuda|all] [--sizes quick|full]\n"
               "                          [--threads N] [--ops warp,compose,compose_power,integrate_ss]\n"
               "                          [--min-time S] [--min-reps N] [--max-reps N] [--warmup N]\n"
               "                          [--case I] [--seed N] [--out FILE] [--dump DIR] [--default-malloc]\n"
               "  Like the libdrdm programs, calls drdm::keep_freed_memory_for_reuse() at start-up\n"
               "  unless --default-malloc is given.\n"
               "  quick: 2D 256x256 (batch 1, 8), 3D 64^3 (batch 1); full adds 3D 128^3 (batch 1).\n"
               "  --case I runs only the I-th (0-based) of those cases.\n"
               "  --dump DIR writes the results of all four ops on small deterministic inputs as raw\n"
               "  float32 files (for bench/run.py's cross-check) and exits.\n");
  std::exit(rc);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value after %s\n", a.c_str());
        usage(2);
      }
      return argv[++i];
    };
    try {
      if (a == "-h" || a == "--help") usage(0);
      else if (a == "--device") o.device = value();
      else if (a == "--sizes") o.sizes = value();
      else if (a == "--ops") o.ops = value();
      else if (a == "--out") o.out = value();
      else if (a == "--dump") o.dump = value();
      else if (a == "--threads") o.threads = std::stoi(value());
      else if (a == "--case") o.case_index = std::stoi(value());
      else if (a == "--min-time") o.min_time_s = std::stod(value());
      else if (a == "--min-reps") o.min_reps = std::stoi(value());
      else if (a == "--max-reps") o.max_reps = std::stoi(value());
      else if (a == "--warmup") o.warmup = std::stoi(value());
      else if (a == "--seed") o.seed = std::stoull(value());
      else if (a == "--default-malloc") o.default_malloc = true;
      else {
        std::fprintf(stderr, "unknown argument: %s\n", a.c_str());
        usage(2);
      }
    } catch (const std::logic_error&) {  // stoi/stod on a bad number
      std::fprintf(stderr, "bad value for %s\n", a.c_str());
      usage(2);
    }
  }
  if (o.device != "cpu" && o.device != "cuda" && o.device != "all") usage(2);
  if (o.sizes != "quick" && o.sizes != "full") usage(2);
  if (o.min_reps < 1 || o.max_reps < o.min_reps || o.warmup < 0) usage(2);
  return o;
}

bool wanted(const std::string& list, const std::string& op) {
  if (list == "all") return true;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ','))
    if (item == op) return true;
  return false;
}

std::string size_string(const std::vector<int64_t>& size) {
  std::string s;
  for (size_t i = 0; i < size.size(); ++i) s += (i ? "x" : "") + std::to_string(size[i]);
  return s;
}

// Smooth random displacement field [N, d, ...S] in voxels: standard normal
// noise on a grid 8 times coarser than S, scaled to `amplitude` voxels and
// upsampled linearly (align_corners). Drawn on the CPU generator.
at::Tensor smooth_field(int64_t batch, const std::vector<int64_t>& size, double amplitude) {
  const int64_t d = static_cast<int64_t>(size.size());
  std::vector<int64_t> coarse{batch, d};
  for (auto s : size) coarse.push_back(std::max<int64_t>(2, s / 8));
  auto noise = at::randn(coarse, at::kFloat) * amplitude;
  return d == 2 ? at::upsample_bilinear2d(noise, size, /*align_corners=*/true)
                : at::upsample_trilinear3d(noise, size, /*align_corners=*/true);
}

// Image [N, 1, ...S]: uniform noise in [0, 1).
at::Tensor random_image(int64_t batch, const std::vector<int64_t>& size) {
  std::vector<int64_t> shape{batch, 1};
  shape.insert(shape.end(), size.begin(), size.end());
  return at::rand(shape, at::kFloat);
}

// Forces completion of all queued work that produced `t` (CUDA launches are
// asynchronous; copying one element to the host waits for the stream).
void sync(const at::Tensor& t) {
  if (t.is_cuda()) (void)t.reshape(-1)[0].item<float>();
}

struct Timing {
  double median_ms;
  double min_ms;
  int reps;
};

Timing time_op(const std::function<at::Tensor()>& op, const Options& o) {
  for (int i = 0; i < o.warmup; ++i) sync(op());
  using clock = std::chrono::steady_clock;
  std::vector<double> ms;
  const auto start = clock::now();
  while (true) {
    const auto t0 = clock::now();
    sync(op());
    const auto t1 = clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    const double total = std::chrono::duration<double>(t1 - start).count();
    const int reps = static_cast<int>(ms.size());
    if (reps >= o.max_reps || (reps >= o.min_reps && total >= o.min_time_s)) break;
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  const double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  return {median, sorted.front(), static_cast<int>(n)};
}

// Writes results of small deterministic cases as raw little-endian float32
// (C-order) files: <dir>/<op>_<d>d.f32. The Python peer writes the same files.
void dump(const Options& o) {
  const std::vector<Case> cases{{{64, 48}, 2}, {{24, 32, 20}, 1}};
  for (const auto& c : cases) {
    at::manual_seed(o.seed);
    auto image = random_image(c.batch, c.size);
    auto a = smooth_field(c.batch, c.size, 3.0);
    auto b = smooth_field(c.batch, c.size, 3.0);
    const std::string tag = std::to_string(c.size.size()) + "d";
    const std::vector<std::pair<std::string, at::Tensor>> outs{
        {"warp", drdm::warp(image, a)},
        {"compose", drdm::compose(a, b)},
        {"compose_power", drdm::compose_power(a, 8)},
        {"integrate_ss", drdm::integrate_scaling_squaring(a, 7)}};
    for (const auto& [name, t] : outs) {
      const auto path = o.dump + "/" + name + "_" + tag + ".f32";
      auto x = t.contiguous().to(at::kFloat).cpu();
      std::ofstream f(path, std::ios::binary);
      f.write(reinterpret_cast<const char*>(x.data_ptr<float>()),
              static_cast<std::streamsize>(x.numel() * sizeof(float)));
      if (!f) throw std::runtime_error("cannot write " + path);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (!o.default_malloc) drdm::keep_freed_memory_for_reuse();  // as the programs ship
  if (o.threads > 0) at::set_num_threads(o.threads);

  if (!o.dump.empty()) {
    dump(o);
    return 0;
  }

  std::vector<std::string> devices;
  if (o.device == "cpu" || o.device == "all") devices.push_back("cpu");
  if (o.device == "cuda" || o.device == "all") {
    if (at::hasCUDA()) {
      devices.push_back("cuda");
    } else if (o.device == "cuda") {
      std::fprintf(stderr, "drdm_bench_spatial: --device cuda but CUDA is not available\n");
      return 1;
    }
  }

  std::vector<Case> cases{{{256, 256}, 1}, {{256, 256}, 8}, {{64, 64, 64}, 1}};
  if (o.sizes == "full") cases.push_back({{128, 128, 128}, 1});
  if (o.case_index >= static_cast<int>(cases.size())) {
    std::fprintf(stderr, "drdm_bench_spatial: --case %d but --sizes %s has %zu cases\n",
                 o.case_index, o.sizes.c_str(), cases.size());
    return 2;
  }

  std::ofstream file;
  if (!o.out.empty()) {
    file.open(o.out);
    if (!file) {
      std::fprintf(stderr, "drdm_bench_spatial: cannot open %s\n", o.out.c_str());
      return 1;
    }
  }
  std::ostream& out = o.out.empty() ? std::cout : file;

  const int threads = at::get_num_threads();
  for (const auto& dev : devices) {
    const at::Device device(dev == "cuda" ? at::kCUDA : at::kCPU);
    for (size_t ci = 0; ci < cases.size(); ++ci) {
      if (o.case_index >= 0 && static_cast<size_t>(o.case_index) != ci) continue;
      const auto& c = cases[ci];
      // Same seed and drawing order as bench/peer_spatial.py.
      at::manual_seed(o.seed + ci);
      const auto image = random_image(c.batch, c.size).to(device);
      const auto a = smooth_field(c.batch, c.size, 3.0).to(device);
      const auto b = smooth_field(c.batch, c.size, 3.0).to(device);

      const std::vector<std::pair<std::string, std::function<at::Tensor()>>> ops{
          {"warp", [&] { return drdm::warp(image, a, drdm::Interpolation::kLinear,
                                           drdm::Padding::kZeros); }},
          {"compose", [&] { return drdm::compose(a, b); }},
          {"compose_power", [&] { return drdm::compose_power(a, 8); }},
          {"integrate_ss", [&] { return drdm::integrate_scaling_squaring(a, 7); }},
      };
      for (const auto& [name, fn] : ops) {
        if (!wanted(o.ops, name)) continue;
        const Timing t = time_op(fn, o);
        char line[512];
        std::snprintf(line, sizeof line,
                      "{\"impl\": \"libdrdm\", \"op\": \"%s\", \"dims\": %zu, \"size\": \"%s\", "
                      "\"batch\": %lld, \"device\": \"%s\", \"threads\": %d, "
                      "\"median_ms\": %.4f, \"min_ms\": %.4f, \"reps\": %d}",
                      name.c_str(), c.size.size(), size_string(c.size).c_str(),
                      static_cast<long long>(c.batch), dev.c_str(), threads, t.median_ms,
                      t.min_ms, t.reps);
        out << line << std::endl;
        if (!o.out.empty()) std::fprintf(stderr, "%s\n", line);
      }
    }
  }
  return 0;
}
