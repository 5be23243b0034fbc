#include "drdm/io/image_io.h"

#include <ATen/ATen.h>
#include <itkImage.h>
#include <itkImageFileReader.h>
#include <itkImageFileWriter.h>
#include <itkImageIOBase.h>
#include <itkImageIOFactory.h>
#include <itkMetaImageIOFactory.h>
#include <itkNiftiImageIOFactory.h>
#include <itkNrrdImageIOFactory.h>
#include <itkPNGImageIO.h>
#include <itkPNGImageIOFactory.h>
#include <itkRGBPixel.h>
#include <itkVector.h>
#include <itkVectorImage.h>
#include <nifti1.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <tuple>

#include "drdm/core/log.h"
#include "io/atomic_file.h"
#include "io/files.h"
#include "io/nifti_raw.h"
#include "io/write_check.h"

namespace drdm {
namespace detail {
namespace {

// ITK's IO factories are not registered unless something asks for them.
void register_io_factories() {
  static std::once_flag once;
  std::call_once(once, [] {
    itk::NiftiImageIOFactory::RegisterOneFactory();
    itk::MetaImageIOFactory::RegisterOneFactory();
    itk::NrrdImageIOFactory::RegisterOneFactory();
    itk::PNGImageIOFactory::RegisterOneFactory();
  });
}

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw std::runtime_error("'" + path + "': " + why);
}

PixelType from_itk(itk::IOComponentEnum c, const std::string& path) {
  using C = itk::IOComponentEnum;
  switch (c) {
    case C::UCHAR:
      return PixelType::kUInt8;
    case C::CHAR:
      return PixelType::kInt8;
    case C::USHORT:
      return PixelType::kUInt16;
    case C::SHORT:
      return PixelType::kInt16;
    case C::UINT:
      return PixelType::kUInt32;
    case C::INT:
      return PixelType::kInt32;
    case C::ULONG:
    case C::ULONGLONG:
      return PixelType::kUInt64;
    case C::LONG:
    case C::LONGLONG:
      return PixelType::kInt64;
    case C::FLOAT:
      return PixelType::kFloat32;
    case C::DOUBLE:
      return PixelType::kFloat64;
    default:
      fail(path, "unsupported pixel component type");
  }
}

// ITK 5.2's NIfTI reader aborts the whole process (VNL: "matrix has
// non-finite elements") on a header whose spacing or orientation is NaN/Inf,
// and never returns from its SVD of an srow of -1.7e38 (both found by
// fuzzing), so those fields are checked before ITK sees the file. 1e9 mm is
// far beyond any real voxel size or position.
void check_nifti_header_finite(const std::string& path) {
  if (!has_extension(path, ".nii") && !has_extension(path, ".nii.gz") &&
      !has_extension(path, ".hdr"))
    return;
  unsigned char h[540] = {};
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return;
  const int n = gzread(f, h, sizeof(h));
  gzclose(f);
  if (n < 348) return;  // ITK refuses a short header itself
  // The version from the magic (ITK ignores sizeof_hdr), the byte order from
  // dim[0] (1..7), as the NIfTI library decides them; no magic: Analyze 7.5.
  const bool v2 =
      n >= 540 && (std::memcmp(h + 4, "n+2", 4) == 0 || std::memcmp(h + 4, "ni2", 4) == 0);
  const bool v1 = std::memcmp(h + 344, "n+1", 4) == 0 || std::memcmp(h + 344, "ni1", 4) == 0;
  const size_t dim0_at = v2 ? 16 : 40, dim0_bytes = v2 ? 8 : 2;
  unsigned char d0[8] = {};
  std::memcpy(d0, h + dim0_at, dim0_bytes);
  const bool swap =
      d0[0] < 1 || d0[0] > 7;    // little-endian dim[0] in 1..7 has it in the first byte
  auto value = [&](size_t at) {  // a float (NIfTI-1) or double (NIfTI-2) field
    unsigned char b[8];
    const size_t bytes = v2 ? 8 : 4;
    std::memcpy(b, h + at, bytes);
    if (swap) std::reverse(b, b + bytes);
    if (!v2) {
      float x;
      std::memcpy(&x, b, 4);
      return static_cast<double>(x);
    }
    double x;
    std::memcpy(&x, b, 8);
    return x;
  };
  // pixdim[1..7]; for NIfTI also quatern_b..qoffset_z and srow_x/y/z.
  const size_t pixdim = v2 ? 104 : 76, quatern = v2 ? 352 : 256, step = v2 ? 8 : 4;
  std::vector<size_t> fields;
  for (size_t k = 1; k < 8; ++k) fields.push_back(pixdim + k * step);
  if (v1 || v2)
    for (size_t k = 0; k < 18; ++k) fields.push_back(quatern + k * step);
  for (auto at : fields)
    if (!(std::abs(value(at)) <= 1e9))
      fail(path,
           "NIfTI header holds a NaN, Inf or implausibly large (> 1e9) voxel size, position or "
           "orientation (pixdim, quatern, qoffset or srow)");
}

// ITK 5.2's MetaImage reader takes NDims = -3 as a huge count and never
// returns (found by fuzzing), so NDims is checked before ITK sees the file.
void check_metaimage_ndims(const std::string& path) {
  if (!has_extension(path, ".mha") && !has_extension(path, ".mhd")) return;
  std::ifstream in(path, std::ios::binary);
  std::string line;
  for (int n = 0; n < 200 && std::getline(in, line); ++n) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    // The key as MetaIO compares it: C-string semantics stop at a NUL byte.
    const auto start = line.find_first_not_of(" \t");
    const auto key = line.substr(
        start, line.find_first_not_of(
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_", start) -
                   start);
    const auto value = line.substr(eq + 1);
    if (key != "NDims") continue;  // every NDims line: MetaIO reads on past a stray ElementDataFile
    char* end = nullptr;
    const long ndims = std::strtol(value.c_str(), &end, 10);
    if (end == value.c_str() || ndims < 1 || ndims > 8)
      fail(path, "MetaImage header: NDims must be an integer from 1 to 8, got '" + value + "'");
  }
}

itk::ImageIOBase::Pointer open_io(const std::string& path) {
  register_io_factories();
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(path, "no such file");
  if (S_ISDIR(st.st_mode)) fail(path, "is a directory, expected an image file");
  check_nifti_header_finite(path);
  // Before any reader allocates what the header claims.
  if (const auto header = read_nifti_header(path)) check_nifti_size(path, *header);
  check_metaimage_ndims(path);
  auto io = itk::ImageIOFactory::CreateImageIO(path.c_str(), itk::ImageIOFactory::ReadMode);
  if (!io && is_gzip(path))  // a small file's header reaches the damaged trailer: say so
    read_bytes(
        path, 0, true, [](const unsigned char*, size_t) {}, path);
  if (!io)
    fail(path,
         "not a readable NIfTI, MetaImage, NRRD or PNG image (unknown format or corrupt header)");
  io->SetFileName(path);
  try {
    io->ReadImageInformation();
  } catch (const itk::ExceptionObject& e) {
    fail(path, std::string("cannot read image header: ") + e.GetDescription());
  }
  return io;
}

// ANTs and nibabel store a displacement field as 5D NIfTI [x, y, z, 1, d] with
// intent DISPVECT (1006), 2D ones as [x, y, 1, 1, 2]; ITK 5.2 reads only intent
// VECTOR (1007) as vectors and reports these as 5D scalar images. Returns d for
// such a file, else 0.
unsigned nifti_vector_components(const itk::ImageIOBase& io, const std::string& path) {
  if (std::string(io.GetNameOfClass()) != "NiftiImageIO" || io.GetNumberOfDimensions() != 5 ||
      io.GetNumberOfComponents() != 1)
    return 0;
  const auto h = read_nifti_header(path);
  if (!h || (h->intent_code != NIFTI_INTENT_DISPVECT && h->intent_code != NIFTI_INTENT_VECTOR) ||
      h->dim[0] != 5 || h->dim[4] != 1)
    return 0;
  if (h->dim[5] == 3 || (h->dim[5] == 2 && h->dim[3] == 1)) return static_cast<unsigned>(h->dim[5]);
  return 0;
}

ImageInfo info_from_io(const itk::ImageIOBase& io, const std::string& path) {
  ImageInfo info;
  const unsigned d = io.GetNumberOfDimensions();
  const unsigned vector_components = nifti_vector_components(io, path);
  // A trailing axis of size 1 beyond 3 (e.g. NIfTI time = 1) is dropped by ITK
  // readers of lower dimension; anything else beyond 3D is not supported.
  unsigned effective = vector_components ? vector_components : d;
  while (effective > 3 && io.GetDimensions(effective - 1) == 1) --effective;
  if (effective < 2 || effective > 3)
    fail(path, "unsupported image dimension " + std::to_string(d) + " (expected 2D or 3D)");
  auto& g = info.geometry;
  for (unsigned k = 0; k < effective; ++k) {
    g.size.push_back(static_cast<int64_t>(io.GetDimensions(k)));
    g.spacing.push_back(io.GetSpacing(k));
    g.origin.push_back(io.GetOrigin(k));
  }
  g.direction.assign(effective * effective, 0.0);
  for (unsigned k = 0; k < effective; ++k) {
    const auto col = io.GetDirection(k);
    for (unsigned r = 0; r < effective; ++r) g.direction[r * effective + k] = col[r];
  }
  info.pixel_type = from_itk(io.GetComponentType(), path);
  info.components = vector_components ? vector_components : io.GetNumberOfComponents();
  check_grid_size(g, path);
  return info;
}

template <typename ImageT>
Geometry geometry_of(const ImageT* image) {
  constexpr unsigned D = ImageT::ImageDimension;
  Geometry g;
  const auto region = image->GetLargestPossibleRegion();
  for (unsigned k = 0; k < D; ++k) {
    g.size.push_back(static_cast<int64_t>(region.GetSize()[k]));
    g.spacing.push_back(image->GetSpacing()[k]);
    g.origin.push_back(image->GetOrigin()[k]);
  }
  for (unsigned r = 0; r < D; ++r)
    for (unsigned c = 0; c < D; ++c) g.direction.push_back(image->GetDirection()(r, c));
  return g;
}

template <typename ImageT>
void apply_geometry(ImageT* image, const Geometry& g) {
  constexpr unsigned D = ImageT::ImageDimension;
  typename ImageT::SpacingType spacing;
  typename ImageT::PointType origin;
  typename ImageT::DirectionType direction;
  for (unsigned k = 0; k < D; ++k) {
    spacing[k] = g.spacing[k];
    origin[k] = g.origin[k];
    for (unsigned c = 0; c < D; ++c) direction(k, c) = g.direction[k * D + c];
  }
  image->SetSpacing(spacing);
  image->SetOrigin(origin);
  image->SetDirection(direction);
}

template <typename ImageT>
typename ImageT::Pointer read_itk(const std::string& path) {
  auto reader = itk::ImageFileReader<ImageT>::New();
  reader->SetFileName(path);
  try {
    reader->Update();
  } catch (const itk::ExceptionObject& e) {
    fail(path, std::string("cannot read image data: ") + e.GetDescription());
  }
  return reader->GetOutput();
}

// Reads a scalar image as `double`, returns [1, 1, ...S] double and its geometry.
template <unsigned D>
std::pair<torch::Tensor, Geometry> read_scalar(const std::string& path) {
  using ImageT = itk::Image<double, D>;
  auto image = read_itk<ImageT>(path);
  auto g = geometry_of(image.GetPointer());
  std::vector<int64_t> shape{1, 1};
  for (auto s : g.tensor_size()) shape.push_back(s);
  auto t = at::empty(shape, at::kDouble);
  std::memcpy(t.data_ptr<double>(), image->GetBufferPointer(), sizeof(double) * t.numel());
  return {t, g};
}

// ITK 5.2 does not fail on a NIfTI or MetaImage file whose data is cut short
// (it returns zeros or uninitialised memory for the missing part), never checks
// a gzip member's CRC-32 and length (it stops inflating once it has the voxels),
// and reads NaN and Inf in NIfTI float data as 0. So the file's raw data is
// checked before reading: `nan_message` says what NaN/Inf is refused in.
uint64_t file_size_of(const std::string& file) {
  struct stat st {};
  return ::stat(file.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

// Bytes from `offset` on in `file`, inflated (and checked to the end) when `compressed`.
uint64_t available_bytes(const std::string& file, uint64_t offset, bool compressed,
                         const std::string& name) {
  if (!compressed) return file_size_of(file) > offset ? file_size_of(file) - offset : 0;
  uint64_t total = 0;
  read_bytes(
      file, offset, true, [&](const unsigned char*, size_t n) { total += n; }, name);
  return total;
}

// The MetaImage data (file, offset, compressed) of the header `path`; nullopt
// for layouts not checked (slice lists, file patterns, HeaderSize).
struct DataLocation {
  std::string file;
  uint64_t offset = 0;
  bool compressed = false;
};
std::optional<DataLocation> metaimage_data(const std::string& path) {
  // The header is "Key = Value" lines; ElementDataFile is the last one.
  std::ifstream in(path, std::ios::binary);
  std::string line, element_data_file;
  DataLocation where{path, 0, false};
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    auto trim = [](std::string t) {
      const auto b = t.find_first_not_of(" \t\r"), e = t.find_last_not_of(" \t\r");
      return b == std::string::npos ? std::string() : t.substr(b, e - b + 1);
    };
    const auto key = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
    if (key == "CompressedData") where.compressed = value == "True" || value == "true";
    if (key == "HeaderSize") return std::nullopt;  // skipped bytes: rare, not checked
    if (key == "ElementDataFile") {
      element_data_file = value;
      break;
    }
  }
  if (element_data_file == "LOCAL") {
    where.offset = static_cast<uint64_t>(in.tellg());
  } else if (element_data_file.empty() || element_data_file.rfind("LIST", 0) == 0 ||
             element_data_file.find_first_of("% ") != std::string::npos) {
    return std::nullopt;
  } else if (element_data_file[0] == '/') {
    where.file = element_data_file;
  } else {
    const auto slash = path.find_last_of('/');
    where.file = slash == std::string::npos ? element_data_file
                                            : path.substr(0, slash + 1) + element_data_file;
  }
  return where;
}

// Bytes per stored component of a NIfTI-1 datatype (RGB: per channel); 0 if unknown.
uint64_t nifti_component_bytes(int datatype) {
  switch (datatype) {
    case DT_UINT8:
    case DT_INT8:
    case DT_RGB24:
    case DT_RGBA32:
      return 1;
    case DT_INT16:
    case DT_UINT16:
      return 2;
    case DT_INT32:
    case DT_UINT32:
    case DT_FLOAT32:
    case DT_COMPLEX64:
      return 4;
    case DT_INT64:
    case DT_UINT64:
    case DT_FLOAT64:
    case DT_COMPLEX128:
      return 8;
    default:
      return 0;
  }
}

void check_data(const itk::ImageIOBase& io, const std::string& path,
                const std::string& nan_message) {
  uint64_t needed = io.GetImageSizeInBytes();
  const std::string kind = io.GetNameOfClass();
  if (kind == "NiftiImageIO") {
    if (!has_extension(path, ".nii") && !has_extension(path, ".nii.gz")) return;  // .hdr/.img
    const auto header = read_nifti_header(path);
    if (!header) return;
    // The stored type, not ITK's: ITK reports scaled integer voxels (scl_slope) as float.
    if (const uint64_t bytes = nifti_component_bytes(header->datatype))
      needed = static_cast<uint64_t>(io.GetImageSizeInComponents()) * bytes;
    check_nifti_data(path, *header, needed, nan_message);
    return;
  }
  if (kind != "MetaImageIO") return;  // NRRD and PNG readers fail on short data themselves
  const auto where = metaimage_data(path);
  if (!where) return;
  const auto found = available_bytes(where->file, where->offset, where->compressed, path);
  if (found < needed)
    fail(path, "image data is truncated or corrupt: expected " + std::to_string(needed) +
                   " bytes of voxel data, found " + std::to_string(found) +
                   (where->file == path ? std::string() : " in '" + where->file + "'"));
}

// The NIfTI qform/sform codes of `path` (-1, -1 for other formats).
void set_codes_from(const std::string& path, Geometry* g) {
  const auto header = has_extension(path, ".nii") || has_extension(path, ".nii.gz")
                          ? read_nifti_header(path)
                          : std::nullopt;
  g->qform_code = header ? header->qform_code : -1;
  g->sform_code = header ? header->sform_code : -1;
}

// The ATen type that holds a NIfTI-1 datatype's raw scalars (uint16/uint32
// are held as their signed twins and widened after) and the PixelType ITK
// reports for it; nullopt for the rest (colour, complex, uint64: ITK decodes those).
std::optional<std::pair<at::ScalarType, PixelType>> nifti_scalar_type(int datatype) {
  switch (datatype) {
    case DT_UINT8:
      return std::make_pair(at::kByte, PixelType::kUInt8);
    case DT_INT8:
      return std::make_pair(at::kChar, PixelType::kInt8);
    case DT_INT16:
      return std::make_pair(at::kShort, PixelType::kInt16);
    case DT_UINT16:
      return std::make_pair(at::kShort, PixelType::kUInt16);
    case DT_INT32:
      return std::make_pair(at::kInt, PixelType::kInt32);
    case DT_UINT32:
      return std::make_pair(at::kInt, PixelType::kUInt32);
    case DT_INT64:
      return std::make_pair(at::kLong, PixelType::kInt64);
    case DT_FLOAT32:
      return std::make_pair(at::kFloat, PixelType::kFloat32);
    case DT_FLOAT64:
      return std::make_pair(at::kDouble, PixelType::kFloat64);
    default:
      return std::nullopt;
  }
}

// Positive finite spacing, finite origin and an invertible direction: what
// ITK's image reader would accept without changing anything.
bool plain_grid(const Geometry& g) {
  const auto finite = [](const std::vector<double>& v) {
    return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
  };
  if (!finite(g.spacing) || !finite(g.origin) || !finite(g.direction)) return false;
  if (std::any_of(g.spacing.begin(), g.spacing.end(), [](double s) { return !(s > 0); }))
    return false;
  const auto& m = g.direction;
  const double det = g.dimension() == 2
                         ? m[0] * m[3] - m[1] * m[2]
                         : m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6]) +
                               m[2] * (m[3] * m[7] - m[4] * m[6]);
  return std::abs(det) > 1e-6;
}

void swap_bytes(void* data, int64_t count, size_t width) {
  auto* p = static_cast<unsigned char*>(data);
  for (int64_t i = 0; i < count; ++i, p += width) std::reverse(p, p + width);
}

// A single-file NIfTI-1 image of one scalar per voxel, read in one pass: the
// voxel bytes are inflated once, checked on the way (gzip CRC-32 and length,
// NaN/Inf, length: check_nifti_data) and decoded here, where ITK's reader
// would inflate the whole file a second time. The geometry is ITK's, from
// the header. The result holds what ITK's reader gives ([1, 1, ...S]: float
// data as stored, integers as double);
// nullopt where ITK decodes the data instead: other formats, .hdr/.img
// pairs, colour, complex or uint64 voxels, scaled voxels (scl_slope not 0
// or 1, or scl_inter not 0), a size or type that disagrees with ITK's, or a
// grid ITK's reader would change.
std::optional<at::Tensor> read_nifti_voxels(const itk::ImageIOBase& io, const std::string& path,
                                            const ImageInfo& info, const std::string& nan_message) {
  if (std::string(io.GetNameOfClass()) != "NiftiImageIO" || info.components != 1)
    return std::nullopt;
  if (!has_extension(path, ".nii") && !has_extension(path, ".nii.gz")) return std::nullopt;
  const auto header = read_nifti_header(path);
  if (!header || !header->single_file) return std::nullopt;
  const auto type = nifti_scalar_type(header->datatype);
  if (!type || type->second != info.pixel_type || !plain_grid(info.geometry)) return std::nullopt;
  if (header->scl_inter != 0 || (header->scl_slope != 0 && header->scl_slope != 1))
    return std::nullopt;
  std::vector<int64_t> shape{1, 1};
  for (auto s : info.geometry.tensor_size()) shape.push_back(s);
  at::Tensor raw = at::empty(shape, type->first);
  const auto needed = static_cast<uint64_t>(raw.nbytes());
  if (needed != io.GetImageSizeInBytes() ||
      header->bitpix != 8 * static_cast<int>(raw.element_size()) || header->data_bytes() != needed)
    return std::nullopt;
  check_nifti_data(path, *header, needed, nan_message, static_cast<unsigned char*>(raw.data_ptr()));
  if (header->swapped && raw.element_size() > 1)
    swap_bytes(raw.data_ptr(), raw.numel(), raw.element_size());
  if (header->datatype == DT_UINT16) raw = raw.to(at::kInt).bitwise_and(0xFFFF);
  if (header->datatype == DT_UINT32) raw = raw.to(at::kLong).bitwise_and(0xFFFFFFFFLL);
  // Floats as they are (double holds them exactly); integers as double, as
  // ITK gives them (int64 -> float must round once, from the double).
  return at::isFloatingType(raw.scalar_type()) ? raw : raw.to(at::kDouble);
}

// allow_colour: RGB/RGBA pixels (colour or palette PNGs, which often hold
// grey scans) are read as their luminance, which ITK computes on reading.
std::pair<torch::Tensor, Image> read_scalar_any(const std::string& path, bool allow_colour,
                                                const std::string& nan_message) {
  const auto io = open_io(path);
  const auto info = info_from_io(*io, path);
  const auto pixel = io->GetPixelType();
  const bool colour = pixel == itk::IOPixelEnum::RGB || pixel == itk::IOPixelEnum::RGBA;
  if (info.components != 1 && !(colour && allow_colour))
    fail(path, "expected a scalar image, got " + std::to_string(info.components) +
                   " components per voxel (" + (colour ? "an RGB image" : "a vector image") + ")");
  if (info.components != 1)
    log::info(c10::str("'", path, "': ", (pixel == itk::IOPixelEnum::RGB ? "RGB" : "RGBA"),
                       " pixels read as grey (luminance)"));
  at::Tensor t;
  Geometry g = info.geometry;
  if (auto voxels = read_nifti_voxels(*io, path, info, nan_message)) {
    t = *voxels;
  } else {
    check_data(*io, path, nan_message);
    std::tie(t, g) = info.geometry.dimension() == 2 ? read_scalar<2>(path) : read_scalar<3>(path);
  }
  set_codes_from(path, &g);
  Image out;
  out.geometry = g;
  out.pixel_type = info.pixel_type;
  return {t, out};
}

// Physical (mm, LPS) <- voxel matrix M = Direction * diag(spacing), ITK order.
torch::Tensor voxel_to_physical(const Geometry& g) {
  const int64_t d = g.dimension();
  auto dir = at::tensor(g.direction, at::kDouble).view({d, d});
  auto sp = at::tensor(g.spacing, at::kDouble);
  return dir * sp.view({1, d});
}

void check_geometry(const Geometry& g, at::IntArrayRef tensor_size, const std::string& path) {
  const auto d = static_cast<int64_t>(tensor_size.size());
  if (g.dimension() != d || static_cast<int64_t>(g.spacing.size()) != d ||
      static_cast<int64_t>(g.origin.size()) != d ||
      static_cast<int64_t>(g.direction.size()) != d * d)
    fail(path, "geometry is for a " + std::to_string(g.dimension()) + "D grid, data is " +
                   std::to_string(d) + "D");
  for (int64_t k = 0; k < d; ++k) {
    if (g.size[k] != tensor_size[d - 1 - k])
      fail(path, "geometry size does not match the data's spatial size along ITK axis " +
                     std::to_string(k) + " (" + std::to_string(g.size[k]) + " vs " +
                     std::to_string(tensor_size[d - 1 - k]) + ")");
    if (!(g.spacing[k] > 0) || !std::isfinite(g.spacing[k]))
      fail(path, "spacing must be positive and finite");
  }
  const auto m = voxel_to_physical(g);
  const double det = at::linalg_det(m).item<double>();
  if (!std::isfinite(det) || std::abs(det) < 1e-12) fail(path, "direction matrix is singular");
}

// Writes through a temporary folder (see atomic_file.h), translating ITK's
// exceptions into messages that name the file.
template <typename WriteFn>
void write_atomically(const std::string& path, WriteFn&& write) {
  register_io_factories();
  try {
    write_via_temporary(path, write);
  } catch (const itk::ExceptionObject& e) {
    fail(path, std::string("cannot write: ") + e.GetDescription());
  }
}

// An image of type ImageT allocated on the grid of `g`.
template <typename ImageT>
typename ImageT::Pointer allocate_on(const Geometry& g) {
  constexpr unsigned D = ImageT::ImageDimension;
  auto image = ImageT::New();
  typename ImageT::SizeType size;
  for (unsigned k = 0; k < D; ++k) size[k] = static_cast<itk::SizeValueType>(g.size[k]);
  image->SetRegions(typename ImageT::RegionType(size));
  apply_geometry(image.GetPointer(), g);
  image->Allocate();
  return image;
}

// ITK's NIfTI and MetaImage writers only print a failed write (a full disk):
// the written file is checked before it is moved into place.
void verify_written(const std::string& tmp, const std::string& path) {
  try {
    // check_data inflates .nii.gz and compressed MetaImage data to the end
    // (CRC-32 / Adler-32 and length); what is left are the cheap size checks.
    check_data(*open_io(tmp), tmp, "holds NaN or Inf values");
    check_compressed_data_complete(tmp, /*inflate=*/false);
  } catch (const std::exception& e) {
    // The message names the files by their final names.
    std::string why = e.what();
    const auto tmp_dir = tmp.substr(0, tmp.rfind('/') + 1),
               dir = path.substr(0, path.rfind('/') + 1);
    for (auto at = why.find(tmp_dir); at != std::string::npos;
         at = why.find(tmp_dir, at + dir.size()))
      why.replace(at, tmp_dir.size(), dir);
    if (why.rfind("'" + path + "': ", 0) == 0) why = why.substr(path.size() + 4);
    fail(path, "cannot write: the written file is incomplete (is the disk full?): " + why);
  }
}

// ITK 5.2's PNG writer crashes when a write fails (a full disk): libpng's
// error handler longjmps back into PNGImageIO::WriteSlice, which then frees an
// invalid pointer (glibc aborts: "munmap_chunk(): invalid pointer", or a
// segfault). So it encodes into an in-memory file, and the bytes are written
// with checked calls.
template <typename WriterT>
void write_png_through_memory(WriterT& writer, const std::string& tmp, const std::string& path) {
  const int fd = ::memfd_create("drdm-png", MFD_CLOEXEC);
  if (fd < 0) fail(path, "cannot write: no in-memory file for the PNG encoder");
  std::vector<char> bytes;
  try {
    writer.SetImageIO(itk::PNGImageIO::New());
    writer.SetFileName("/proc/self/fd/" + std::to_string(fd));
    writer.Update();
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail(path, "cannot write: the encoded PNG is unreadable");
    bytes.resize(static_cast<size_t>(st.st_size));
    if (::pread(fd, bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size()))
      fail(path, "cannot write: the encoded PNG is unreadable");
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  write_file_checked(tmp, bytes.data(), bytes.size(), path);
}

// ITK 5.2 writes NIfTI qform_code = sform_code = 1 whatever the input had: the
// codes of the file the grid `g` was read from are put back unless they are
// 1/1 already or unknown. ITK writes the same geometry into both matrices, so
// any code > 0 makes readers use it; when both were 0 (no orientation stored:
// readers would ignore our origin and direction), ITK's 1/1 stays.
bool keeps_nifti_codes(const std::string& path, const Geometry* g) {
  auto known = [](int code) { return code >= 0 && code <= 5; };  // NIFTI_XFORM_*
  return g && (has_extension(path, ".nii") || has_extension(path, ".nii.gz")) &&
         known(g->qform_code) && known(g->sform_code) && (g->qform_code > 0 || g->sform_code > 0) &&
         !(g->qform_code == 1 && g->sform_code == 1);
}

// The zlib level of compressed outputs (.nii.gz, .mha): 1, as nibabel writes,
// unless DRDM_GZIP_LEVEL says 1-9. Level 6 (zlib's default) made files about
// 2 % smaller and took 3.5 times as long (bench/run.py io, docs/performance.md).
int gzip_level() {
  static const int level = [] {
    const char* v = std::getenv("DRDM_GZIP_LEVEL");
    if (v == nullptr || *v == '\0') return 1;
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    if (*end != '\0' || x < 1 || x > 9)
      throw std::invalid_argument(std::string("environment variable DRDM_GZIP_LEVEL = '") + v +
                                  "' is not a zlib level from 1 to 9");
    return static_cast<int>(x);
  }();
  return level;
}

// `grid`: the geometry the image was made with, for its NIfTI codes.
template <typename ImageT>
void write_itk(const std::string& path, const ImageT* image, bool compress,
               const Geometry* grid = nullptr) {
  write_atomically(path, [&](const std::string& tmp) {
    // ITK 5.2 compresses NIfTI at zlib's level 6 whatever it is told, and
    // writes its own qform/sform codes: a .nii.gz is written plain by ITK and
    // compressed here, once, with the codes set on the way.
    const bool recode = keeps_nifti_codes(path, grid);
    const bool gz = has_extension(tmp, ".nii.gz");
    const std::string written = gz ? tmp.substr(0, tmp.size() - 3) : tmp;
    auto writer = itk::ImageFileWriter<ImageT>::New();
    writer->SetInput(image);
    if (has_extension(path, ".png")) {
      writer->SetUseCompression(compress);
      return write_png_through_memory(*writer, tmp, path);
    }
    writer->SetFileName(written);
    writer->SetUseCompression(compress && !gz);
    if (compress && !gz) writer->SetCompressionLevel(gzip_level());
    writer->Update();
    if (gz || recode) {
      const std::optional<NiftiCodes> codes =
          recode ? std::optional<NiftiCodes>(NiftiCodes{grid->qform_code, grid->sform_code})
                 : std::nullopt;
      set_nifti_codes(written, tmp, codes, gzip_level(), path);
    }
    verify_written(tmp, path);
  });
}

template <typename T, unsigned D>
void write_scalar(const std::string& path, const torch::Tensor& values, const Geometry& g) {
  using ImageT = itk::Image<T, D>;
  auto image = allocate_on<ImageT>(g);
  auto v = values.to(at::kDouble).contiguous().cpu();
  const double* src = v.data_ptr<double>();
  T* dst = image->GetBufferPointer();
  const auto n = v.numel();
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_integral_v<T>) {
      const double lo = static_cast<double>(std::numeric_limits<T>::lowest());
      double hi = static_cast<double>(std::numeric_limits<T>::max());
      // 64-bit maxima round up to 2^63 / 2^64 in double, which would overflow the cast.
      if constexpr (std::numeric_limits<T>::digits > std::numeric_limits<double>::digits)
        hi = std::nextafter(hi, 0.0);
      dst[i] = static_cast<T>(std::clamp(std::nearbyint(src[i]), lo, hi));
    } else {
      dst[i] = static_cast<T>(src[i]);
    }
  }
  write_itk(path, image.GetPointer(), /*compress=*/true, &g);
}

template <unsigned D>
void write_scalar_typed(const std::string& path, const torch::Tensor& values, const Geometry& g,
                        PixelType type) {
  switch (type) {
    case PixelType::kUInt8:
      return write_scalar<uint8_t, D>(path, values, g);
    case PixelType::kInt8:
      return write_scalar<int8_t, D>(path, values, g);
    case PixelType::kUInt16:
      return write_scalar<uint16_t, D>(path, values, g);
    case PixelType::kInt16:
      return write_scalar<int16_t, D>(path, values, g);
    case PixelType::kUInt32:
      return write_scalar<uint32_t, D>(path, values, g);
    case PixelType::kInt32:
      return write_scalar<int32_t, D>(path, values, g);
    case PixelType::kUInt64:
      return write_scalar<uint64_t, D>(path, values, g);
    case PixelType::kInt64:
      return write_scalar<int64_t, D>(path, values, g);
    case PixelType::kFloat32:
      return write_scalar<float, D>(path, values, g);
    case PixelType::kFloat64:
      return write_scalar<double, D>(path, values, g);
  }
}

// Accepts [1, C, ...S] or [...S]; returns [C, ...S] on the CPU.
torch::Tensor strip_batch(const torch::Tensor& t, const std::string& path, const char* what) {
  TORCH_CHECK(t.defined(), what, " '", path, "': undefined tensor");
  if (t.dim() == 2 || t.dim() == 3) return t.unsqueeze(0).cpu();
  TORCH_CHECK(t.dim() == 4 || t.dim() == 5, what, " '", path,
              "': expected [1, C, H, W] or [1, C, D, H, W], got sizes ", t.sizes());
  TORCH_CHECK(t.size(0) == 1, what, " '", path, "': expected a batch of one, got sizes ",
              t.sizes());
  return t.squeeze(0).cpu();
}

template <unsigned D>
void write_vector_field(const std::string& path, const torch::Tensor& phys, const Geometry& g) {
  using VectorT = itk::Vector<float, D>;
  using ImageT = itk::Image<VectorT, D>;
  auto image = allocate_on<ImageT>(g);
  // phys is [...S, D] float, components in ITK order: exactly the vector buffer.
  std::memcpy(static_cast<void*>(image->GetBufferPointer()), phys.data_ptr<float>(),
              sizeof(float) * phys.numel());
  write_itk(path, image.GetPointer(), /*compress=*/true, &g);
}

template <unsigned D>
std::pair<torch::Tensor, Geometry> read_vector_field(const std::string& path) {
  using ImageT = itk::VectorImage<double, D>;
  auto image = read_itk<ImageT>(path);
  auto g = geometry_of(image.GetPointer());
  std::vector<int64_t> shape;
  for (auto s : g.tensor_size()) shape.push_back(s);
  shape.push_back(D);
  auto t = at::empty(shape, at::kDouble);
  std::memcpy(t.data_ptr<double>(), image->GetBufferPointer(), sizeof(double) * t.numel());
  return {t, g};
}

// The voxels of a 5D NIfTI field [x, y, z, 1, d] (nifti_vector_components) on
// the grid `g` read from its header, as [...S, d] in ITK component order.
torch::Tensor read_5d_vector_field(const std::string& path, const Geometry& g) {
  auto image = read_itk<itk::Image<double, 5>>(path);
  const int64_t d = g.dimension();
  std::vector<int64_t> shape{d}, perm;  // file order: component slowest
  for (auto s : g.tensor_size()) shape.push_back(s);
  for (int64_t i = 1; i <= d; ++i) perm.push_back(i);
  perm.push_back(0);
  auto t = at::empty(shape, at::kDouble);
  if (image->GetLargestPossibleRegion().GetNumberOfPixels() != static_cast<uint64_t>(t.numel()))
    fail(path, "5D vector field data does not match its header");
  std::memcpy(t.data_ptr<double>(), image->GetBufferPointer(), sizeof(double) * t.numel());
  return t.permute(perm).contiguous();
}

}  // namespace
}  // namespace detail

void check_grid_size(const Geometry& geometry, const std::string& path) {
  const int64_t d = geometry.dimension(), slice = geometry.single_slice_axis();
  bool ok = true;
  std::string size;
  for (int64_t k = 0; k < d; ++k) {
    ok = ok && (geometry.size[k] >= 2 || (slice >= 0 && k == 2 - slice));
    size += (k ? "x" : "") + std::to_string(geometry.size[k]);
  }
  if (!ok)
    detail::fail(path, "degenerate grid of " + size +
                           " voxels: every axis needs at least 2 voxels (warping and finite "
                           "differences need two), except one axis of 1 voxel in a 3D "
                           "single-slice image such as 256x256x1");
}

std::string to_string(PixelType type) {
  switch (type) {
    case PixelType::kUInt8:
      return "uint8";
    case PixelType::kInt8:
      return "int8";
    case PixelType::kUInt16:
      return "uint16";
    case PixelType::kInt16:
      return "int16";
    case PixelType::kUInt32:
      return "uint32";
    case PixelType::kInt32:
      return "int32";
    case PixelType::kUInt64:
      return "uint64";
    case PixelType::kInt64:
      return "int64";
    case PixelType::kFloat32:
      return "float32";
    case PixelType::kFloat64:
      return "float64";
  }
  return "unknown";
}

Geometry Geometry::identity(const std::vector<int64_t>& tensor_size) {
  Geometry g;
  const auto d = tensor_size.size();
  g.size.assign(tensor_size.rbegin(), tensor_size.rend());
  g.spacing.assign(d, 1.0);
  g.origin.assign(d, 0.0);
  g.direction.assign(d * d, 0.0);
  for (size_t k = 0; k < d; ++k) g.direction[k * d + k] = 1.0;
  return g;
}

int64_t Geometry::single_slice_axis() const {
  if (dimension() != 3 || std::count(size.begin(), size.end(), int64_t{1}) != 1) return -1;
  const auto itk_axis = std::find(size.begin(), size.end(), int64_t{1}) - size.begin();
  return 2 - itk_axis;
}

Geometry Geometry::squeeze_single_slice() const {
  const int64_t axis = single_slice_axis();
  if (axis < 0) return *this;
  const auto drop = static_cast<size_t>(2 - axis);  // ITK axis
  Geometry g;
  g.qform_code = qform_code;
  g.sform_code = sform_code;
  for (size_t r = 0; r < 3; ++r) {
    if (r == drop) continue;
    g.size.push_back(size[r]);
    g.spacing.push_back(spacing[r]);
    g.origin.push_back(origin[r]);
    for (size_t c = 0; c < 3; ++c)
      if (c != drop) g.direction.push_back(direction[r * 3 + c]);
  }
  return g;
}

Image squeeze_single_slice_field(const torch::Tensor& field, const Geometry& geometry) {
  Image out;
  out.geometry = geometry.squeeze_single_slice();
  const int64_t axis = geometry.single_slice_axis();
  if (axis < 0) {
    out.data = field;
    return out;
  }
  TORCH_CHECK(field.dim() == 5 && field.size(1) == 3 && field.size(2 + axis) == 1,
              "squeeze_single_slice_field: expected a field [N, 3, ...S] on the single-slice grid ",
              geometry.tensor_size(), ", got sizes ", field.sizes());
  std::vector<int64_t> in_plane;
  for (int64_t a = 0; a < 3; ++a)
    if (a != axis) in_plane.push_back(a);
  const auto index =
      at::tensor(in_plane, at::TensorOptions().dtype(at::kLong).device(field.device()));
  out.data = field.index_select(1, index).select(2 + axis, 0).contiguous();
  return out;
}

ImageInfo read_image_info(const std::string& path) {
  const auto io = detail::open_io(path);
  auto info = detail::info_from_io(*io, path);
  detail::set_codes_from(path, &info.geometry);
  return info;
}

Image read_image(const std::string& path) {
  const std::string nan_message = "image contains NaN or Inf values";
  auto [t, out] = detail::read_scalar_any(path, /*allow_colour=*/true, nan_message);
  if (!at::isfinite(t).all().item<bool>()) detail::fail(path, nan_message);
  out.data = t.to(at::kFloat);
  return out;
}

Image read_labels(const std::string& path) {
  const std::string nan_message = "label map contains NaN or Inf values";
  auto [t, out] = detail::read_scalar_any(path, /*allow_colour=*/false, nan_message);
  if (!at::isfinite(t).all().item<bool>()) detail::fail(path, nan_message);
  if (!at::equal(t, t.round()))
    detail::fail(path, "label map contains non-integer values (is this an image, not labels?)");
  out.data = t.to(at::kLong);
  return out;
}

void write_image(const std::string& path, const torch::Tensor& image, const Geometry& geometry,
                 PixelType type) {
  auto t = detail::strip_batch(image, path, "write_image");
  TORCH_CHECK(t.size(0) == 1, "write_image '", path, "': expected one channel, got sizes ",
              image.sizes());
  t = t.squeeze(0);
  detail::check_geometry(geometry, t.sizes(), path);
  if (detail::has_extension(path, ".png") && type != PixelType::kUInt8 &&
      type != PixelType::kUInt16)
    detail::fail(path, "PNG holds only uint8 or uint16 pixels, asked for " + to_string(type));
  // ITK's PNG writer would silently keep only the first slice of a volume.
  if (detail::has_extension(path, ".png") && geometry.dimension() == 3 && geometry.size[2] != 1)
    detail::fail(path, "PNG holds 2D images only, got a volume of " +
                           std::to_string(geometry.size[2]) + " slices");
  if (!at::isfinite(t).all().item<bool>())
    detail::fail(path, "refusing to write NaN or Inf values");
  if (geometry.dimension() == 2)
    detail::write_scalar_typed<2>(path, t, geometry, type);
  else
    detail::write_scalar_typed<3>(path, t, geometry, type);
}

void write_labels(const std::string& path, const torch::Tensor& labels, const Geometry& geometry) {
  TORCH_CHECK(!at::isFloatingType(labels.scalar_type()), "write_labels '", path,
              "': expected an integer class map, got ", labels.scalar_type());
  int64_t lo = 0, hi = 0;
  if (labels.numel()) {
    lo = labels.min().item<int64_t>();
    hi = labels.max().item<int64_t>();
  }
  PixelType type = PixelType::kInt64;
  if (lo >= 0 && hi <= 255)
    type = PixelType::kUInt8;
  else if (lo >= 0 && hi <= 65535)
    type = PixelType::kUInt16;
  else if (lo >= -32768 && hi <= 32767)
    type = PixelType::kInt16;
  else if (lo >= std::numeric_limits<int32_t>::min() && hi <= std::numeric_limits<int32_t>::max())
    type = PixelType::kInt32;
  write_image(path, labels, geometry, type);
}

void write_field(const std::string& path, const torch::Tensor& field, const Geometry& geometry) {
  auto t = detail::strip_batch(field, path, "write_field");  // [d, ...S]
  const int64_t d = t.dim() - 1;
  TORCH_CHECK(t.size(0) == d && (d == 2 || d == 3), "write_field '", path,
              "': expected a field [1, d, ...S] with d = 2 or 3 spatial dims, got sizes ",
              field.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "write_field '", path,
              "': expected a floating-point field, got ", t.scalar_type());
  detail::check_geometry(geometry, t.sizes().slice(1), path);
  if (!at::isfinite(t).all().item<bool>())
    detail::fail(path, "refusing to write NaN or Inf values");
  // Channel i is tensor axis i = ITK axis d-1-i: reverse into ITK order, then
  // map continuous-index displacements to physical ones.
  std::vector<int64_t> perm;
  for (int64_t i = 1; i <= d; ++i) perm.push_back(i);
  perm.push_back(0);
  auto idx = t.to(at::kDouble).flip({0}).permute(perm);  // [...S, d], ITK order
  auto phys = at::matmul(idx, detail::voxel_to_physical(geometry).t()).to(at::kFloat).contiguous();
  if (d == 2)
    detail::write_vector_field<2>(path, phys, geometry);
  else
    detail::write_vector_field<3>(path, phys, geometry);
}

Image read_field(const std::string& path) {
  const auto io = detail::open_io(path);
  const auto info = detail::info_from_io(*io, path);
  const int64_t d = info.geometry.dimension();
  if (info.components != d)
    detail::fail(path, "expected a displacement field with " + std::to_string(d) +
                           " components per voxel on a " + std::to_string(d) + "D grid, got " +
                           std::to_string(info.components) + " component(s)");
  const std::string nan_message = "displacement field contains NaN or Inf values";
  detail::check_data(*io, path, nan_message);
  torch::Tensor phys;  // [...S, d] mm, ITK order
  Geometry g;
  if (detail::nifti_vector_components(*io, path)) {
    g = info.geometry;
    phys = detail::read_5d_vector_field(path, g);
  } else {
    std::tie(phys, g) =
        d == 2 ? detail::read_vector_field<2>(path) : detail::read_vector_field<3>(path);
  }
  detail::set_codes_from(path, &g);
  if (!at::isfinite(phys).all().item<bool>()) detail::fail(path, nan_message);
  auto m_inv = at::linalg_inv(detail::voxel_to_physical(g));
  auto idx = at::matmul(phys, m_inv.t());  // [...S, d] ITK order
  std::vector<int64_t> perm{d};
  for (int64_t i = 0; i < d; ++i) perm.push_back(i);
  Image out;
  out.data = idx.permute(perm).flip({0}).to(at::kFloat).contiguous().unsqueeze(0);
  out.geometry = g;
  out.pixel_type = info.pixel_type;
  return out;
}

void write_rgb_png(const std::string& path, const torch::Tensor& rgb) {
  TORCH_CHECK(rgb.dim() == 3 && rgb.size(0) == 3 && rgb.scalar_type() == at::kByte,
              "write_rgb_png '", path, "': expected uint8 [3, H, W], got ", rgb.scalar_type(), " ",
              rgb.sizes());
  if (!detail::has_extension(path, ".png")) detail::fail(path, "expected a .png file name");
  using ImageT = itk::Image<itk::RGBPixel<uint8_t>, 2>;
  auto image = detail::allocate_on<ImageT>(Geometry::identity({rgb.size(1), rgb.size(2)}));
  auto hwc = rgb.permute({1, 2, 0}).contiguous().cpu();
  std::memcpy(static_cast<void*>(image->GetBufferPointer()), hwc.data_ptr<uint8_t>(), hwc.numel());
  detail::write_itk(path, image.GetPointer(), /*compress=*/false);
}

}  // namespace drdm
