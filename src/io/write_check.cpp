#include "io/write_check.h"

#include <sys/stat.h>
#include <zlib.h>

#include <fstream>
#include <stdexcept>
#include <vector>

#include "io/files.h"

namespace drdm::detail {
namespace {

[[noreturn]] void incomplete(const std::string& path, const std::string& why) {
  throw std::runtime_error("'" + path + "': " + why);
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) incomplete(path, "missing");
  return static_cast<uint64_t>(st.st_size);
}

// Inflates `length` bytes of `path` from `offset` (gzip members or one zlib
// stream): true when every stream ends exactly at the end of the range and
// its check value (CRC-32 / Adler-32, and the gzip length) matches.
bool inflates_to_end(const std::string& path, uint64_t offset, uint64_t length, bool gzip) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(offset));
  z_stream z{};
  if (inflateInit2(&z, gzip ? 15 + 16 : 15) != Z_OK) return false;
  std::vector<unsigned char> input(1 << 16), output(1 << 16);
  int rc = Z_OK;
  while (true) {
    if (z.avail_in == 0) {
      const auto want = static_cast<std::streamsize>(std::min<uint64_t>(input.size(), length));
      in.read(reinterpret_cast<char*>(input.data()), want);
      z.next_in = input.data();
      z.avail_in = static_cast<uInt>(in.gcount());
      length -= z.avail_in;
      if (z.avail_in == 0) break;  // the data ends
    }
    z.next_out = output.data();
    z.avail_out = static_cast<uInt>(output.size());
    rc = inflate(&z, Z_NO_FLUSH);
    if (rc == Z_STREAM_END && (z.avail_in > 0 || length > 0) && gzip) {
      inflateReset(&z);  // the next gzip member
      rc = Z_OK;
    } else if (rc == Z_STREAM_END) {
      break;
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
      break;  // corrupt data
    }
  }
  const bool complete = rc == Z_STREAM_END && z.avail_in == 0 && length == 0;
  inflateEnd(&z);
  return complete;
}

// MetaImage: (compressed, CompressedDataSize, data file, data offset).
struct MetaData {
  bool compressed = false;
  uint64_t compressed_size = 0;
  std::string file;
  uint64_t offset = 0;
};

MetaData meta_data(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MetaData m;
  std::string line;
  const auto value_of = [](const std::string& l) {
    const auto b = l.find_first_not_of(" \t", l.find('=') + 1), e = l.find_last_not_of(" \t\r");
    return b == std::string::npos ? std::string() : l.substr(b, e - b + 1);
  };
  while (std::getline(in, line)) {
    const auto key = line.substr(0, line.find_first_of(" =\t"));
    if (key == "CompressedData") m.compressed = value_of(line) == "True";
    if (key == "CompressedDataSize") m.compressed_size = std::stoull(value_of(line));
    if (key == "ElementDataFile") {
      m.file = value_of(line);
      m.offset = static_cast<uint64_t>(in.tellg());
      break;
    }
  }
  if (m.file != "LOCAL") {
    const auto slash = path.find_last_of('/');
    m.file = slash == std::string::npos ? m.file : path.substr(0, slash + 1) + m.file;
    m.offset = 0;
  } else {
    m.file = path;
  }
  return m;
}

}  // namespace

void check_compressed_data_complete(const std::string& path, bool inflate) {
  unsigned char magic[2] = {};
  std::ifstream(path, std::ios::binary).read(reinterpret_cast<char*>(magic), 2);
  if (magic[0] == 0x1f && magic[1] == 0x8b) {
    if (inflate && !inflates_to_end(path, 0, file_size(path), /*gzip=*/true))
      incomplete(path, "the gzip data is cut short or corrupt");
    return;
  }
  if (!has_extension(path, ".mha") && !has_extension(path, ".mhd")) return;
  const auto m = meta_data(path);
  if (!m.compressed || m.compressed_size == 0) return;
  if (file_size(m.file) != m.offset + m.compressed_size)
    incomplete(path, "holds " +
                         std::to_string(file_size(m.file) - std::min(file_size(m.file), m.offset)) +
                         " bytes of compressed data, its header says " +
                         std::to_string(m.compressed_size));
  if (inflate && !inflates_to_end(m.file, m.offset, m.compressed_size, /*gzip=*/false))
    incomplete(path, "the compressed data is cut short or corrupt");
}

}  // namespace drdm::detail
