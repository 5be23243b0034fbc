#include "fuzz_targets.h"

#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <typeinfo>

#include "drdm/diffusion/train_config.h"
#include "drdm/io/image_io.h"
#include "drdm/reg/synth.h"
#include "drdm/seg/fewshot.h"

namespace drdm::fuzz {
namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "drdm fuzz finding: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// Calls fn; an exception other than invalid_argument / runtime_error, or one
// whose message names none of `names` (the file, the config or the option),
// is a finding.
void expect_clean(const char* call, const std::vector<std::string>& names,
                  const std::function<void()>& fn) {
  auto check_message = [&](const char* what) {
    for (const auto& n : names)
      if (std::string(what).find(n) != std::string::npos) return;
    finding(std::string(call) + ": message does not name '" + names.front() + "': " + what);
  };
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    check_message(e.what());
  } catch (const std::runtime_error& e) {
    check_message(e.what());
  } catch (const std::exception& e) {
    finding(std::string(call) + ": unexpected exception " + typeid(e).name() + ": " + e.what());
  } catch (...) {
    finding(std::string(call) + ": unexpected non-standard exception");
  }
}

// Input: the config text, then optionally "\0"-separated section.key=value overrides.
void fuzz_config(const uint8_t* data, size_t size) {
  const std::string all(reinterpret_cast<const char*>(data), size);
  const auto nul = all.find('\0');
  const std::string text = all.substr(0, nul);
  std::vector<std::string> overrides;
  for (size_t at = nul; at != std::string::npos && at < all.size();) {
    const auto next = all.find('\0', at + 1);
    overrides.push_back(
        all.substr(at + 1, next == std::string::npos ? std::string::npos : next - at - 1));
    at = next;
  }
  const std::string source = "fuzz-config.json";
  // A config that parses must print as JSON that parses back to the same config.
  auto round_trip = [&](auto parse) {
    const auto first = to_json(parse(text, source, overrides));
    std::string second;
    try {
      second = to_json(parse(first, source + " (printed)", {}));
    } catch (const std::exception& e) {
      finding(std::string("printed config does not parse back: ") + e.what() + "\n" + first);
    }
    if (first != second)
      finding("printed config parses to another config:\n" + first + "\n" + second);
  };
  const std::vector<std::string> names{source, "--set"};  // errors in overrides name the option
  expect_clean("parse_train_config", names, [&] { round_trip(parse_train_config); });
  expect_clean("parse_seg_config", names, [&] { round_trip(seg::parse_seg_config); });
  expect_clean("parse_reg_config", names, [&] { round_trip(reg::parse_reg_config); });
}

std::string gzip(const uint8_t* data, size_t size) {
  z_stream z{};
  if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    finding("deflateInit2");
  std::string out(deflateBound(&z, size) + 32, '\0');
  z.next_in = const_cast<uint8_t*>(data);
  z.avail_in = static_cast<uInt>(size);
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) finding("deflate");
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// One scratch folder per process, holding the one input file; removed at exit.
struct Scratch {
  std::string dir, file;
  ~Scratch() {
    if (!file.empty()) unlink(file.c_str());
    if (!dir.empty()) rmdir(dir.c_str());
  }
  std::string path(const std::string& ext) {
    if (dir.empty()) {
      const char* tmp = std::getenv("TMPDIR");
      std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/drdm-fuzz-XXXXXX";
      if (!mkdtemp(tmpl.data())) finding("cannot create a scratch folder");
      dir = tmpl;
    }
    if (!file.empty()) unlink(file.c_str());
    file = dir + "/input" + ext;
    return file;
  }
};
Scratch scratch;

void write_file(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) finding("cannot write " + path);
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size())
    finding("short write to " + path);
  std::fclose(f);
}

// Writes the input under the target's extension and runs every reader on it.
void fuzz_image(const std::string& target, const uint8_t* data, size_t size) {
  std::string ext = "." + target, bytes(reinterpret_cast<const char*>(data), size);
  if (target == "niigz") ext = ".nii.gz", bytes = gzip(data, size);  // mutate the NIfTI inside
  if (target == "gz") ext = ".nii.gz";                               // mutate the gzip stream
  const std::string path = scratch.path(ext);
  write_file(path, bytes);
  expect_clean("read_image_info", {path}, [&] { read_image_info(path); });
  expect_clean("read_image", {path}, [&] { read_image(path); });
  expect_clean("read_labels", {path}, [&] { read_labels(path); });
  expect_clean("read_field", {path}, [&] { read_field(path); });
}

}  // namespace

const std::vector<std::string>& target_names() {
  static const std::vector<std::string> names{"config", "nii", "niigz", "gz", "mha", "nrrd"};
  return names;
}

void run_target(const std::string& target, const uint8_t* data, size_t size) {
  if (target == "config") return fuzz_config(data, size);
  for (const auto& name : target_names())
    if (name == target) return fuzz_image(target, data, size);
  finding("unknown fuzz target '" + target + "'");
}

}  // namespace drdm::fuzz
