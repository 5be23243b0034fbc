// Private: what ITK 5.2 does not check in image files, read from their raw bytes: the
// integrity of compressed (gzip/zlib) data, NaN/Inf in NIfTI float data, the NIfTI-1
// header's intent and qform/sform codes; and setting those codes in a written file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>

namespace drdm::detail {

/// Receives a file's (inflated) bytes in order, a chunk at a time.
using ByteSink = std::function<void(const unsigned char* bytes, size_t n)>;

/// Hands every byte of `file` from `offset` on to `sink`. When `compressed`, the bytes
/// are a gzip or zlib stream (several gzip members allowed, trailing zero bytes
/// ignored) and are inflated to its very end, so that zlib checks every member's
/// CRC-32 and length (gzip) or Adler-32 (zlib). Throws std::runtime_error naming
/// `name` when the data is corrupt, truncated (a member without its end or
/// trailer) or followed by other data, or the file cannot be read.
void read_bytes(const std::string& file, uint64_t offset, bool compressed, const ByteSink& sink,
                const std::string& name);

/// True if `file` starts with the gzip magic bytes 1f 8b.
bool is_gzip(const std::string& file);

/// The parts of a NIfTI-1 header the checks need, in host byte order.
struct NiftiHeader {
  bool swapped = false;  ///< the file's byte order is not the host's
  int64_t dim[8] = {};
  int intent_code = 0;
  int datatype = 0;
  int bitpix = 0;
  uint64_t vox_offset = 352;
  int qform_code = 0;
  int sform_code = 0;
  float scl_slope = 0;  ///< voxel scaling: value = raw * scl_slope + scl_inter (0: none)
  float scl_inter = 0;
  bool single_file = false;  ///< "n+1": header and data in one file (not .hdr/.img)
  /// Bytes of voxel data: prod(dim[1..dim[0]]) * bitpix / 8.
  uint64_t data_bytes() const;
};

/// The header of a NIfTI-1 file (.nii, or .nii.gz read through gzip); nullopt when
/// `path` is not one (other formats, NIfTI-2, unreadable).
std::optional<NiftiHeader> read_nifti_header(const std::string& path);

/// Throws std::runtime_error naming `path` when the file cannot hold the voxel data
/// its header claims: a plain .nii shorter than vox_offset + the data, or a .nii.gz
/// whose claimed data exceed what deflate can expand its bytes to (1032:1). Cheap
/// (one stat), and meant to run before anything is allocated for the voxels.
void check_nifti_size(const std::string& path, const NiftiHeader& header);

/// Reads the whole of the single-file NIfTI-1 `path` (inflating and checking gzip as
/// read_bytes does) and throws std::runtime_error naming it when its float32/float64
/// voxel data hold NaN or Inf (`nan_message` says what), or when fewer than `needed`
/// bytes of voxel data follow vox_offset. With `voxels`, the first `needed` bytes of
/// voxel data are copied there on the way (one pass where a reader would inflate the
/// file a second time).
void check_nifti_data(const std::string& path, const NiftiHeader& header, uint64_t needed,
                      const std::string& nan_message, unsigned char* voxels = nullptr);

/// NIfTI qform_code and sform_code.
using NiftiCodes = std::pair<int, int>;

/// Sets `codes` in the header of the uncompressed NIfTI-1 file `src`: in place
/// when `dst` == `src`; otherwise the patched file is written gzip-compressed
/// (zlib `level`, 1-9) to `dst` and `src` is removed. Without `codes`, `src`
/// (any file) is only compressed to `dst`. Throws std::runtime_error naming
/// `name` on any read or write error.
void set_nifti_codes(const std::string& src, const std::string& dst,
                     const std::optional<NiftiCodes>& codes, int level, const std::string& name);

}  // namespace drdm::detail
