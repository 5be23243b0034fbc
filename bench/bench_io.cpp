// Reading and writing images with libdrdm: read_image (with its integrity
// checks: gzip CRC and length, NaN/Inf in the raw voxels, header sanity) and
// write_image (atomic: temporary file, read-back check, fsync, rename), on
// the files `bench/peer_io.py --make DIR` writes with SimpleITK.
//
// Prints one JSON object per (op, file); bench/peer_io.py times SimpleITK and
// nibabel on the same files and prints the same schema; `bench/run.py io`
// joins them. Every read row carries the sum of the voxels read, so that
// run.py can check that both sides read the same numbers.

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench_common.h"
#include "drdm/io/image_io.h"

namespace {

using drdm::bench::time_op;
using drdm::bench::Timing;
using drdm::bench::wanted;

/// The files of the cases, in case order (bench/peer_io.py IO_FILES).
const std::vector<std::string> kFiles = {"ct_int16.nii.gz", "mr_float32.nii.gz", "mr_float32.nii",
                                         "mr_float32.mha"};

struct Options : drdm::bench::CommonOptions {
  std::string dir;  // where the input files are; outputs are written there too
};

constexpr char kUsage[] =
    R"(usage: drdm_bench_io --dir DIR [--ops read,write] [--threads N] [--case I]
                     [--min-time S] [--min-reps N] [--max-reps N] [--warmup N]
                     [--rounds N] [--out FILE]
  DIR holds the files bench/peer_io.py --make writes:
  0 ct_int16.nii.gz, 1 mr_float32.nii.gz, 2 mr_float32.nii, 3 mr_float32.mha.
  read: read_image to a float32 tensor; write: write_image of that tensor in the
  file's own format and pixel type, to DIR/out_libdrdm_<file>.
)";

double megabytes(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<double>(st.st_size) / (1 << 20) : -1;
}

/// `name`: the case's file; `file`: the one read or written (its size is reported).
std::string row(const std::string& op, const std::string& name, const std::string& file,
                const drdm::Image& image, const Timing& t, const std::string& extra) {
  char mb[64];
  std::snprintf(mb, sizeof mb, ", \"file_mb\": %.3f", megabytes(file));
  return drdm::bench::result_row(op, image.geometry.size, 1, "cpu", t,
                                 ", \"file\": \"" + name + "\", \"pixel\": \"" +
                                     drdm::to_string(image.pixel_type) + "\"" + mb + extra);
}

void run_case(const Options& o, const drdm::bench::CaseRun& r) {
  const std::string& name = kFiles[r.index];
  const std::string path = o.dir + "/" + name;
  const drdm::Image image = drdm::read_image(path);
  if (wanted(o.ops, "read")) {
    const Timing t = time_op([&](int) { return drdm::read_image(path).data; }, o);
    char sum[64];
    std::snprintf(sum, sizeof sum, ", \"sum\": %.17g",
                  image.data.to(at::kDouble).sum().item<double>());
    r.emit(row("read", name, path, image, t, sum));
  }
  if (wanted(o.ops, "write")) {
    const std::string target = o.dir + "/out_libdrdm_" + name;
    const Timing t = time_op(
        [&](int) {
          drdm::write_image(target, image.data, image.geometry, image.pixel_type);
          return image.data;
        },
        o);
    r.emit(row("write", name, target, image, t, ""));
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  drdm::bench::Benchmark b(
      "drdm_bench_io", kUsage, [] { return kFiles.size(); },
      [&](const drdm::bench::CaseRun& r) { run_case(o, r); });
  b.flags = {{"--dir", [&](const std::string& v) { o.dir = v; }}};
  b.valid = [&] { return !o.dir.empty(); };
  b.per_device = false;  // the files are read and written on the CPU
  return drdm::bench::run_benchmark(argc, argv, o, b);
}
