#include "io/nifti_raw.h"

#include <nifti1.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <vector>

namespace drdm::detail {
namespace {

static_assert(sizeof(nifti_1_header) == 348, "NIfTI-1 header layout");

[[noreturn]] void fail(const std::string& name, const std::string& why) {
  throw std::runtime_error("'" + name + "': " + why);
}

using FilePtr = std::unique_ptr<FILE, int (*)(FILE*)>;

FilePtr open_file(const std::string& file, const char* mode, const std::string& name) {
  FilePtr f(std::fopen(file.c_str(), mode), &std::fclose);
  if (!f) fail(name, std::string("cannot open: ") + std::strerror(errno));
  return f;
}

bool all_zero(const unsigned char* p, size_t n) {
  return std::all_of(p, p + n, [](unsigned char b) { return b == 0; });
}

// Inflates `f` to its end. zlib itself verifies each gzip member's CRC-32 and
// ISIZE (or a zlib stream's Adler-32) when it reaches the member's trailer, which
// ITK's readers never do: they stop once they have the voxels.
void inflate_all(FILE* f, const ByteSink& sink, const std::string& name) {
  z_stream z{};
  if (inflateInit2(&z, 15 + 32) != Z_OK) fail(name, "cannot start zlib");  // 32: gzip or zlib
  std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&z, &inflateEnd);
  std::vector<unsigned char> in(1 << 16), out(1 << 16);
  bool in_member = true;  // inside a member whose end has not been reached
  for (;;) {
    if (z.avail_in == 0) {
      z.avail_in = static_cast<uInt>(std::fread(in.data(), 1, in.size(), f));
      z.next_in = in.data();
      if (z.avail_in == 0) {
        if (std::ferror(f)) fail(name, "read error");
        break;
      }
    }
    if (!in_member) {  // after a member: the next gzip member, or zero padding
      if (z.next_in[0] == 0x1f) {
        inflateReset(&z);
        in_member = true;
      } else if (all_zero(z.next_in, z.avail_in)) {
        z.avail_in = 0;
        continue;
      } else {
        fail(name,
             "corrupt compressed data: unexpected bytes after the end of the compressed stream");
      }
    }
    z.next_out = out.data();
    z.avail_out = static_cast<uInt>(out.size());
    const int rc = inflate(&z, Z_NO_FLUSH);
    if (const size_t produced = out.size() - z.avail_out) sink(out.data(), produced);
    if (rc == Z_STREAM_END) {
      in_member = false;
    } else if (rc != Z_OK && !(rc == Z_BUF_ERROR && z.avail_in == 0)) {
      const std::string why = z.msg ? z.msg : "error";
      fail(name,
           "corrupt compressed data: " +
               (why == "incorrect data check" ? "checksum mismatch (gzip CRC-32 or zlib Adler-32)"
                : why == "incorrect length check" ? "length mismatch (gzip ISIZE)"
                                                  : "zlib: " + why) +
               "; the file is damaged");
    }
  }
  if (in_member)
    fail(name,
         "compressed data is truncated: the stream ends before its end (for gzip, "
         "before the 8-byte CRC-32 and length trailer)");
}

template <typename T>
T get(const unsigned char* header, size_t offset, bool swapped) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, header + offset, sizeof(T));
  if (swapped) std::reverse(b, b + sizeof(T));
  T v;
  std::memcpy(&v, b, sizeof(T));
  return v;
}

// Tells whether the float32/float64 values streamed through feed() are all
// finite; values may straddle the chunks.
class FiniteCheck {
 public:
  explicit FiniteCheck(const NiftiHeader& h)
      : width_(h.datatype == DT_FLOAT32   ? 4
               : h.datatype == DT_FLOAT64 ? 8
                                          : 0),
        swapped_(h.swapped) {}
  bool finite() const { return finite_; }
  void feed(const unsigned char* p, size_t n) {
    if (width_ == 0 || !finite_) return;
    if (carried_ > 0) {  // complete the value begun in the previous chunk
      const size_t take = std::min(width_ - carried_, n);
      std::memcpy(carry_ + carried_, p, take);
      carried_ += take, p += take, n -= take;
      if (carried_ < width_) return;
      finite_ = width_ == 4 ? all_finite<uint32_t>(carry_, 1) : all_finite<uint64_t>(carry_, 1);
      carried_ = 0;
    }
    const size_t whole = n / width_;
    finite_ =
        finite_ && (width_ == 4 ? all_finite<uint32_t>(p, whole) : all_finite<uint64_t>(p, whole));
    p += whole * width_, n -= whole * width_;
    std::memcpy(carry_, p, n);
    carried_ = n;
  }

 private:
  // IEEE 754: a value is NaN or Inf when all its exponent bits are set. A
  // branch-free loop over the bits (the compiler vectorises it).
  template <typename U>
  bool all_finite(const unsigned char* p, size_t count) const {
    constexpr U exponent =
        sizeof(U) == 4 ? static_cast<U>(0x7f800000u) : static_cast<U>(0x7ff0000000000000ull);
    U bad = 0;
    for (size_t i = 0; i < count; ++i) {
      U u;
      std::memcpy(&u, p + i * sizeof(U), sizeof(U));
      if (swapped_)
        u = sizeof(U) == 4 ? static_cast<U>(__builtin_bswap32(static_cast<uint32_t>(u)))
                           : static_cast<U>(__builtin_bswap64(static_cast<uint64_t>(u)));
      bad |= static_cast<U>((u & exponent) == exponent);
    }
    return bad == 0;
  }
  size_t width_;
  bool swapped_;
  unsigned char carry_[8] = {};
  size_t carried_ = 0;
  bool finite_ = true;
};

}  // namespace

void read_bytes(const std::string& file, uint64_t offset, bool compressed, const ByteSink& sink,
                const std::string& name) {
  auto f = open_file(file, "rb", name);
  if (fseeko(f.get(), static_cast<off_t>(offset), SEEK_SET) != 0) fail(name, "cannot seek");
  if (compressed) return inflate_all(f.get(), sink, name);
  std::vector<unsigned char> buf(1 << 16);
  while (const size_t n = std::fread(buf.data(), 1, buf.size(), f.get())) sink(buf.data(), n);
  if (std::ferror(f.get())) fail(name, "read error");
}

bool is_gzip(const std::string& file) {
  unsigned char magic[2] = {};
  FilePtr f(std::fopen(file.c_str(), "rb"), &std::fclose);
  return f && std::fread(magic, 1, 2, f.get()) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
}

uint64_t NiftiHeader::data_bytes() const {
  uint64_t n = 1;
  for (int64_t k = 1; k <= std::clamp<int64_t>(dim[0], 0, 7); ++k)
    n *= static_cast<uint64_t>(std::max<int64_t>(dim[k], 1));
  return n * static_cast<uint64_t>(std::max(bitpix, 0)) / 8;
}

std::optional<NiftiHeader> read_nifti_header(const std::string& path) {
  unsigned char h[sizeof(nifti_1_header)] = {};
  gzFile f = gzopen(path.c_str(), "rb");  // reads plain files as they are
  if (!f) return std::nullopt;
  const int n = gzread(f, h, sizeof(h));
  gzclose(f);
  if (n != static_cast<int>(sizeof(h))) return std::nullopt;
  NiftiHeader r;
  const auto sizeof_hdr = get<int32_t>(h, offsetof(nifti_1_header, sizeof_hdr), false);
  r.swapped = sizeof_hdr != 348;
  if (get<int32_t>(h, 0, r.swapped) != 348) return std::nullopt;
  const char* magic = reinterpret_cast<const char*>(h + offsetof(nifti_1_header, magic));
  if (std::memcmp(magic, "n+1", 4) != 0 && std::memcmp(magic, "ni1", 4) != 0) return std::nullopt;
  r.single_file = std::memcmp(magic, "n+1", 4) == 0;
  auto i16 = [&](size_t off) { return get<int16_t>(h, off, r.swapped); };
  for (int k = 0; k < 8; ++k) r.dim[k] = i16(offsetof(nifti_1_header, dim) + 2 * k);
  r.intent_code = i16(offsetof(nifti_1_header, intent_code));
  r.datatype = i16(offsetof(nifti_1_header, datatype));
  r.bitpix = i16(offsetof(nifti_1_header, bitpix));
  const auto vox_offset = get<float>(h, offsetof(nifti_1_header, vox_offset), r.swapped);
  if (std::isfinite(vox_offset) && vox_offset >= 352)
    r.vox_offset = static_cast<uint64_t>(vox_offset);
  r.qform_code = i16(offsetof(nifti_1_header, qform_code));
  r.sform_code = i16(offsetof(nifti_1_header, sform_code));
  r.scl_slope = get<float>(h, offsetof(nifti_1_header, scl_slope), r.swapped);
  r.scl_inter = get<float>(h, offsetof(nifti_1_header, scl_inter), r.swapped);
  return r;
}

void check_nifti_size(const std::string& path, const NiftiHeader& header) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec || !header.single_file)
    return;  // unreadable: the reader says so; .hdr/.img: no claim here
  const uint64_t claimed = header.vox_offset + header.data_bytes();
  const bool gzip = is_gzip(path);
  // deflate expands a byte to at most 1032 (zlib's technical notes), plus headers.
  const uint64_t most = gzip ? size * 1032 + 1024 : size;
  if (claimed <= most) return;
  std::string dims;
  for (int64_t k = 1; k <= std::clamp<int64_t>(header.dim[0], 0, 7); ++k)
    dims += (dims.empty() ? "" : " x ") + std::to_string(header.dim[k]);
  fail(path,
       "the header claims " + dims + " voxels (" + std::to_string(claimed) +
           " bytes with the header), but the " +
           (gzip ? "compressed file of " + std::to_string(size) + " bytes cannot hold that much"
                 : "file has " + std::to_string(size) + " bytes") +
           ": the header is corrupt or the file truncated");
}

void check_nifti_data(const std::string& path, const NiftiHeader& header, uint64_t needed,
                      const std::string& nan_message, unsigned char* voxels) {
  const uint64_t begin = header.vox_offset, end = begin + header.data_bytes();
  uint64_t pos = 0;  // of the next byte in the (inflated) file
  FiniteCheck values(header);
  read_bytes(
      path, 0, is_gzip(path),
      [&](const unsigned char* p, size_t n) {
        const uint64_t lo = std::clamp(begin, pos, pos + n), hi = std::clamp(end, pos, pos + n);
        values.feed(p + (lo - pos), hi - lo);
        if (voxels != nullptr) {
          const uint64_t from = std::clamp(begin, pos, pos + n),
                         to = std::clamp(begin + needed, pos, pos + n);
          if (from < to) std::memcpy(voxels + (from - begin), p + (from - pos), to - from);
        }
        pos += n;
      },
      path);
  const uint64_t found = pos > begin ? pos - begin : 0;
  if (found < needed)
    fail(path, "image data is truncated or corrupt: expected " + std::to_string(needed) +
                   " bytes of voxel data, found " + std::to_string(found));
  if (!values.finite()) fail(path, nan_message);
}

void set_nifti_codes(const std::string& src, const std::string& dst,
                     const std::optional<NiftiCodes>& codes, int level, const std::string& name) {
  unsigned char bytes[4];  // qform_code, sform_code: adjacent int16 in the file's byte order
  const uint64_t at = offsetof(nifti_1_header, qform_code);
  static_assert(offsetof(nifti_1_header, sform_code) == offsetof(nifti_1_header, qform_code) + 2);
  if (codes) {
    const auto header = read_nifti_header(src);
    if (!header || is_gzip(src))
      fail(name, "cannot set the NIfTI qform/sform codes: not an uncompressed NIfTI-1 file");
    for (int k = 0; k < 2; ++k) {
      auto v = static_cast<int16_t>(k == 0 ? codes->first : codes->second);
      std::memcpy(bytes + 2 * k, &v, 2);
      if (header->swapped) std::reverse(bytes + 2 * k, bytes + 2 * k + 2);
    }
  }
  if (dst == src) {
    if (!codes) return;
    auto f = open_file(src, "r+b", name);
    if (fseeko(f.get(), static_cast<off_t>(at), SEEK_SET) != 0 ||
        std::fwrite(bytes, 1, 4, f.get()) != 4 || std::fclose(f.release()) != 0)
      fail(name, "cannot set the NIfTI qform/sform codes: write error");
    return;
  }
  const std::string mode = "wb" + std::to_string(std::clamp(level, 1, 9));
  gzFile out = gzopen(dst.c_str(), mode.c_str());
  if (!out) fail(name, "cannot create the compressed file");
  bool ok = true;
  int write_errno = EIO;
  uint64_t pos = 0;
  std::vector<unsigned char> chunk;
  try {
    read_bytes(
        src, 0, false,
        [&](const unsigned char* p, size_t n) {
          chunk.assign(p, p + n);
          if (codes)
            for (uint64_t i = std::max(at, pos); i < std::min(at + 4, pos + n); ++i)
              chunk[i - pos] = bytes[i - at];
          if (ok && gzwrite(out, chunk.data(), static_cast<unsigned>(n)) != static_cast<int>(n))
            ok = false, write_errno = errno;  // the failed write()'s reason
          pos += n;
        },
        name);
  } catch (...) {
    gzclose(out);
    throw;
  }
  const int closed = gzclose(out);
  // zlib reports a failed write() or close() as Z_ERRNO with errno set: the system's reason.
  if (ok && closed != Z_OK) ok = false, write_errno = closed == Z_ERRNO ? errno : EIO;
  if (!ok)
    fail(name, std::string("cannot write the compressed file: ") + std::strerror(write_errno));
  std::remove(src.c_str());
}

}  // namespace drdm::detail
