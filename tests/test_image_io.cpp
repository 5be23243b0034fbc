// Tests for drdm/io/image_io.h: round trips with geometry, axis order, pixel
// types, labels, displacement fields in physical units, errors and atomic writes.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/types.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "drdm/io/image_io.h"

namespace fs = std::filesystem;
using drdm::Geometry;
using drdm::PixelType;

namespace {

// Not fs::remove_all: the PyPI LibTorch exports a copy of it that crashes
// on non-empty folders when the system libstdc++ is older than GCC 13.
void remove_tree(const fs::path& p) {
  std::error_code ec;
  if (fs::is_directory(fs::symlink_status(p, ec))) {
    std::vector<fs::path> children;
    for (fs::directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec))
      children.push_back(it->path());
    for (const auto& c : children) remove_tree(c);
  }
  fs::remove(p, ec);
}

// A fresh folder per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "drdm-test-image-io-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
  }
  ~TempDir() { remove_tree(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  const fs::path& dir() const { return dir_; }
  /// Names of everything in the folder (temporary folders included).
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  fs::path dir_;
};

// Expects `statement` to throw a std::exception whose message names `path`.
#define EXPECT_THROW_NAMING(statement, path)                            \
  do {                                                                  \
    bool thrown_ = false;                                               \
    try {                                                               \
      statement;                                                        \
    } catch (const std::exception& e_) {                                \
      thrown_ = true;                                                   \
      EXPECT_NE(std::string(e_.what()).find(path), std::string::npos)   \
          << "message does not name '" << (path) << "': " << e_.what(); \
    }                                                                   \
    EXPECT_TRUE(thrown_) << #statement " did not throw";                \
  } while (0)

// A proper rotation, far from axis-aligned, row-major d x d.
std::vector<double> rotation(int64_t d) {
  if (d == 2) {
    const double c = std::cos(0.5), s = std::sin(0.5);
    return {c, -s, s, c};
  }
  const double a = 0.4, b = -0.3, g = 0.7;  // Rz(a) Ry(b) Rx(g)
  const double ca = std::cos(a), sa = std::sin(a), cb = std::cos(b), sb = std::sin(b);
  const double cg = std::cos(g), sg = std::sin(g);
  // clang-format off
  return {ca * cb, ca * sb * sg - sa * cg, ca * sb * cg + sa * sg,
          sa * cb, sa * sb * sg + ca * cg, sa * sb * cg - ca * sg,
          -sb,     cb * sg,                cb * cg};
  // clang-format on
}

// Anisotropic spacing, non-zero origin, rotated direction.
Geometry rotated_geometry(const std::vector<int64_t>& tensor_size) {
  Geometry g = Geometry::identity(tensor_size);
  const auto d = g.dimension();
  g.spacing = std::vector<double>{0.8, 1.3, 2.1};
  g.spacing.resize(d);
  g.origin = std::vector<double>{-12.5, 33.25, 7.75};
  g.origin.resize(d);
  g.direction = rotation(d);
  return g;
}

void expect_geometry_near(const Geometry& got, const Geometry& want, double tol = 1e-4) {
  EXPECT_EQ(got.size, want.size);
  ASSERT_EQ(got.spacing.size(), want.spacing.size());
  ASSERT_EQ(got.origin.size(), want.origin.size());
  ASSERT_EQ(got.direction.size(), want.direction.size());
  for (size_t k = 0; k < want.spacing.size(); ++k) {
    EXPECT_NEAR(got.spacing[k], want.spacing[k], tol) << "spacing " << k;
    EXPECT_NEAR(got.origin[k], want.origin[k], tol) << "origin " << k;
  }
  for (size_t k = 0; k < want.direction.size(); ++k)
    EXPECT_NEAR(got.direction[k], want.direction[k], tol) << "direction " << k;
}

std::vector<int64_t> shape_of(const std::vector<int64_t>& tensor_size, int64_t channels = 1) {
  std::vector<int64_t> s{1, channels};
  s.insert(s.end(), tensor_size.begin(), tensor_size.end());
  return s;
}

// Asymmetric values that `type` holds exactly (and float32 too).
torch::Tensor pattern(const std::vector<int64_t>& tensor_size, PixelType type) {
  const auto shape = shape_of(tensor_size);
  int64_t n = 1;
  for (auto s : tensor_size) n *= s;
  auto i = at::arange(n, at::kDouble).view(shape);
  torch::Tensor v;
  switch (type) {
    case PixelType::kUInt8:
      v = (i * 7).remainder(251);
      break;
    case PixelType::kUInt16:
      v = (i * 977).remainder(65521);
      break;
    case PixelType::kInt16:
      v = (i * 37).remainder(2001) - 1000;
      break;
    case PixelType::kFloat32:
      v = (i * 13).remainder(97) * 0.25 - 11.5;
      break;
    default:
      v = (i * 29).remainder(89) * 0.0078125 + 1000.0;
      break;  // float64
  }
  return v.to(at::kFloat);
}

// ---- independent readers/writers of the simplest file layouts --------------

// A MetaImage with its data inline ("LOCAL"), x fastest, little endian.
void write_raw_mha(const std::string& path, const std::string& fields, const void* data,
                   size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  f << "ObjectType = Image\n"
    << fields << "BinaryData = True\nBinaryDataByteOrderMSB = False\nElementDataFile = LOCAL\n";
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

// The parts of an uncompressed NIfTI-1 file these tests need.
struct RawNifti {
  std::array<int16_t, 8> dim{};
  int16_t datatype = 0;
  std::vector<float> values;  // float32 data in file order
};

RawNifti read_raw_nifti(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(f)),
                                std::istreambuf_iterator<char>());
  RawNifti r;
  if (bytes.size() < 352) return r;
  int32_t sizeof_hdr = 0;
  float vox_offset = 0;
  std::memcpy(&sizeof_hdr, bytes.data(), 4);
  if (sizeof_hdr != 348) return r;  // compressed, or not little-endian NIfTI-1
  std::memcpy(r.dim.data(), bytes.data() + 40, 16);
  std::memcpy(&r.datatype, bytes.data() + 70, 2);
  std::memcpy(&vox_offset, bytes.data() + 108, 4);
  const auto offset = static_cast<size_t>(vox_offset);
  r.values.resize((bytes.size() - offset) / sizeof(float));
  std::memcpy(r.values.data(), bytes.data() + offset, r.values.size() * sizeof(float));
  return r;
}

torch::Tensor random_field(const std::vector<int64_t>& tensor_size, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const auto d = static_cast<int64_t>(tensor_size.size());
  return at::randn(shape_of(tensor_size, d), gen, at::TensorOptions().dtype(at::kFloat)) * 2.0;
}

const std::vector<std::vector<int64_t>> kSizes = {{5, 7}, {4, 5, 6}};  // tensor order

// ---- round trips ------------------------------------------------------------

class RoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(RoundTrip, ValuesGeometryAndPixelTypes) {
  TempDir tmp;
  const std::string ext = GetParam();
  for (const auto& size : kSizes) {
    const auto geometry = rotated_geometry(size);
    for (auto type :
         {PixelType::kUInt8, PixelType::kInt16, PixelType::kFloat32, PixelType::kFloat64}) {
      SCOPED_TRACE(std::to_string(size.size()) + "D " + drdm::to_string(type) + " " + ext);
      const auto path = tmp.path("img_" + drdm::to_string(type) + ext);
      const auto values = pattern(size, type);
      drdm::write_image(path, values, geometry, type);

      const auto info = drdm::read_image_info(path);
      EXPECT_EQ(info.pixel_type, type);
      EXPECT_EQ(info.components, 1);
      expect_geometry_near(info.geometry, geometry);

      const auto image = drdm::read_image(path);
      EXPECT_EQ(image.data.scalar_type(), at::kFloat);
      EXPECT_EQ(image.data.sizes(), at::IntArrayRef(shape_of(size)));
      EXPECT_TRUE(at::equal(image.data, values)) << "values changed";
      EXPECT_EQ(image.pixel_type, type);
      expect_geometry_near(image.geometry, geometry);
    }
  }
  // Unbatched [...S] input is accepted too.
  const auto size = kSizes[1];
  const auto path = tmp.path("unbatched" + ext);
  drdm::write_image(path, pattern(size, PixelType::kFloat32).view(size), rotated_geometry(size));
  EXPECT_TRUE(at::equal(drdm::read_image(path).data, pattern(size, PixelType::kFloat32)));
}

INSTANTIATE_TEST_SUITE_P(Formats, RoundTrip,
                         ::testing::Values(".nii", ".nii.gz", ".mha", ".mhd", ".nrrd"),
                         [](const auto& info) {
                           std::string s = info.param.substr(1);
                           for (auto& c : s) c = c == '.' ? '_' : c;
                           return s;
                         });

TEST(ImageIo, MhdWritesHeaderAndDataFile) {
  TempDir tmp;
  const auto size = kSizes[1];
  drdm::write_image(tmp.path("a.mhd"), pattern(size, PixelType::kInt16), rotated_geometry(size),
                    PixelType::kInt16);
  const auto files = tmp.entries();
  ASSERT_EQ(files.size(), 2u) << "expected a.mhd and its data file";
  EXPECT_EQ(files[0], "a.mhd");
  EXPECT_TRUE(files[1] == "a.raw" || files[1] == "a.zraw") << files[1];
  EXPECT_TRUE(
      at::equal(drdm::read_image(tmp.path("a.mhd")).data, pattern(size, PixelType::kInt16)));
}

TEST(ImageIo, PngRoundTrip2D) {
  TempDir tmp;
  const std::vector<int64_t> size{5, 7};
  for (auto type : {PixelType::kUInt8, PixelType::kUInt16}) {
    SCOPED_TRACE(drdm::to_string(type));
    const auto path = tmp.path("img_" + drdm::to_string(type) + ".png");
    const auto values = pattern(size, type);
    auto geometry = Geometry::identity(size);
    geometry.spacing = {0.7, 1.9};  // PNG keeps spacing (pHYs), not origin or direction
    drdm::write_image(path, values, geometry, type);
    const auto image = drdm::read_image(path);
    EXPECT_EQ(image.pixel_type, type);
    EXPECT_EQ(image.geometry.size, (std::vector<int64_t>{7, 5}));
    EXPECT_NEAR(image.geometry.spacing[0], 0.7, 1e-3);
    EXPECT_NEAR(image.geometry.spacing[1], 1.9, 1e-3);
    EXPECT_EQ(image.data.sizes(), at::IntArrayRef(shape_of(size)));
    EXPECT_TRUE(at::equal(image.data, values));
  }
}

// Grey scans stored as RGB or palette PNGs read as their grey values; a
// colour picture is not a label map.
TEST(ImageIo, RgbPngReadsAsGreyButNotAsLabels) {
  TempDir tmp;
  const auto path = tmp.path("grey_as_rgb.png");
  auto grey = at::arange(6 * 9, at::kFloat).view({6, 9}).mul(4);  // 0..212
  drdm::write_rgb_png(path, grey.to(at::kByte).unsqueeze(0).expand({3, 6, 9}).contiguous());
  EXPECT_EQ(drdm::read_image_info(path).components, 3);
  const auto image = drdm::read_image(path);
  EXPECT_EQ(image.data.sizes(), at::IntArrayRef({1, 1, 6, 9}));
  EXPECT_TRUE(at::equal(image.data[0][0], grey));
  EXPECT_THROW(drdm::read_labels(path), std::exception);
  EXPECT_THROW(drdm::write_rgb_png(tmp.path("bad.png"), at::zeros({3, 4, 4})), std::exception);
}

TEST(ImageIo, IntegerTypesRoundAndClamp) {
  TempDir tmp;
  const std::vector<int64_t> size{2, 5};  // two rows: a 1 x 5 grid is refused when read
  const auto path = tmp.path("clamp.nrrd");
  drdm::write_image(
      path, at::tensor({-3.0f, 2.4f, 2.6f, 254.9f, 300.0f}).repeat({2}).view(shape_of(size)),
      Geometry::identity(size), PixelType::kUInt8);
  const auto back = drdm::read_image(path).data.flatten();
  EXPECT_TRUE(at::equal(back, at::tensor({0.0f, 2.0f, 3.0f, 255.0f, 255.0f}).repeat({2})));
}

// ---- axis order ---------------------------------------------------------------

// The reader: ITK index (x, y, z), x fastest in the file, is tensor [z][y][x].
TEST(ImageIo, ReaderAxisOrderIsZYX) {
  TempDir tmp;
  std::vector<uint8_t> bytes(4 * 3 * 2);
  for (int z = 0; z < 2; ++z)
    for (int y = 0; y < 3; ++y)
      for (int x = 0; x < 4; ++x)
        bytes[x + 4 * (y + 3 * z)] = static_cast<uint8_t>(x + 10 * y + 100 * z);
  const auto path = tmp.path("pin.mha");
  write_raw_mha(path,
                "NDims = 3\nDimSize = 4 3 2\nElementSpacing = 0.5 1.5 2.5\nOffset = 1 2 3\n"
                "ElementType = MET_UCHAR\n",
                bytes.data(), bytes.size());
  const auto image = drdm::read_image(path);
  EXPECT_EQ(image.geometry.size, (std::vector<int64_t>{4, 3, 2}));
  EXPECT_EQ(image.geometry.tensor_size(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(image.geometry.spacing, (std::vector<double>{0.5, 1.5, 2.5}));
  EXPECT_EQ(image.geometry.origin, (std::vector<double>{1, 2, 3}));
  EXPECT_EQ(image.pixel_type, PixelType::kUInt8);
  ASSERT_EQ(image.data.sizes(), at::IntArrayRef({1, 1, 2, 3, 4}));
  auto a = image.data.accessor<float, 5>();
  for (int z = 0; z < 2; ++z)
    for (int y = 0; y < 3; ++y)
      for (int x = 0; x < 4; ++x) EXPECT_EQ(a[0][0][z][y][x], x + 10 * y + 100 * z);
}

// The writer: tensor [z][y][x] lands at ITK index (x, y, z), x fastest.
TEST(ImageIo, WriterAxisOrderIsZYX) {
  TempDir tmp;
  for (const auto& size : kSizes) {
    SCOPED_TRACE(std::to_string(size.size()) + "D");
    const auto d = static_cast<int64_t>(size.size());
    auto t = at::zeros(shape_of(size), at::kFloat);
    auto flat = t.view(size);
    // value = x + 10 y + 100 z
    for (int64_t i = 0; i < d; ++i) {
      std::vector<int64_t> view(d, 1);
      view[i] = size[i];
      flat.add_(at::arange(size[i], at::kFloat).view(view) * std::pow(10.0, d - 1 - i));
    }
    const auto path = tmp.path("pin" + std::to_string(d) + ".nii");
    drdm::write_image(path, t, rotated_geometry(size));
    const auto raw = read_raw_nifti(path);
    ASSERT_FALSE(raw.values.empty()) << "expected an uncompressed little-endian NIfTI-1 file";
    EXPECT_EQ(raw.datatype, 16);  // NIFTI_TYPE_FLOAT32
    EXPECT_EQ(raw.dim[0], d);
    for (int64_t k = 0; k < d; ++k) EXPECT_EQ(raw.dim[1 + k], size[d - 1 - k]) << "ITK axis " << k;
    const int64_t nx = size[d - 1], ny = size[d - 2], nz = d == 3 ? size[0] : 1;
    ASSERT_GE(static_cast<int64_t>(raw.values.size()), nx * ny * nz);
    for (int64_t z = 0; z < nz; ++z)
      for (int64_t y = 0; y < ny; ++y)
        for (int64_t x = 0; x < nx; ++x)
          EXPECT_EQ(raw.values[x + nx * (y + ny * z)], x + 10 * y + 100 * z);
    EXPECT_EQ(drdm::read_image_info(path).geometry.size,
              std::vector<int64_t>(size.rbegin(), size.rend()));
  }
}

// A gzip file of several members (as bgzip writes) is complete, not truncated.
TEST(ImageIo, ReadsMultiMemberGzipNifti) {
  TempDir tmp;
  const std::vector<int64_t> size{4, 5, 6};
  const auto values = pattern(size, PixelType::kFloat32);
  drdm::write_image(tmp.path("plain.nii"), values, rotated_geometry(size));
  std::ifstream in(tmp.path("plain.nii"), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto crc32 = [](const std::string& s) {
    uint32_t c = 0xffffffffu;
    for (unsigned char b : s) {
      c ^= b;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
  };
  auto put32 = [](std::string& out, uint32_t v) {
    for (int k = 0; k < 4; ++k) out.push_back(static_cast<char>((v >> (8 * k)) & 0xff));
  };
  std::string gz;
  for (const auto& part : {bytes.substr(0, 500), bytes.substr(500)}) {  // two members
    gz += std::string("\x1f\x8b\x08\0\0\0\0\0\0\xff", 10);
    gz += '\x01';  // one final "stored" deflate block
    const auto n = static_cast<uint16_t>(part.size());
    for (uint16_t v : {n, static_cast<uint16_t>(~n)}) {
      gz.push_back(static_cast<char>(v & 0xff));
      gz.push_back(static_cast<char>(v >> 8));
    }
    gz += part;
    put32(gz, crc32(part));
    put32(gz, static_cast<uint32_t>(part.size()));
  }
  const auto path = tmp.path("members.nii.gz");
  std::ofstream(path, std::ios::binary) << gz;
  EXPECT_TRUE(at::equal(drdm::read_image(path).data, values));
}

// ---- labels -------------------------------------------------------------------

TEST(ImageIo, LabelsRoundTripAsInt64WithSmallestType) {
  TempDir tmp;
  const std::vector<int64_t> size{4, 5, 6};
  const auto geometry = rotated_geometry(size);
  const auto base = at::arange(120, at::kLong).remainder(4).view(shape_of(size));
  struct Case {
    int64_t lo, hi;
    PixelType type;
  };
  for (const Case& c : {Case{0, 3, PixelType::kUInt8}, Case{0, 300, PixelType::kUInt16},
                        Case{-5, 7, PixelType::kInt16}, Case{-1, 70000, PixelType::kInt32}}) {
    SCOPED_TRACE(drdm::to_string(c.type));
    auto labels = base.clone();
    labels.view(-1)[0] = c.lo;
    labels.view(-1)[1] = c.hi;
    const auto path = tmp.path("labels_" + drdm::to_string(c.type) + ".nii.gz");
    drdm::write_labels(path, labels, geometry);
    EXPECT_EQ(drdm::read_image_info(path).pixel_type, c.type);
    const auto back = drdm::read_labels(path);
    EXPECT_EQ(back.data.scalar_type(), at::kLong);
    EXPECT_TRUE(at::equal(back.data, labels));
    expect_geometry_near(back.geometry, geometry);
  }
  EXPECT_ANY_THROW(drdm::write_labels(tmp.path("float.nii.gz"), base.to(at::kFloat), geometry));
}

TEST(ImageIo, ReadLabelsRejectsNonIntegerValues) {
  TempDir tmp;
  const std::vector<int64_t> size{4, 5};
  const auto path = tmp.path("not_labels.nrrd");
  auto values = at::zeros(shape_of(size), at::kFloat);
  values.view(-1)[7] = 1.5f;
  drdm::write_image(path, values, Geometry::identity(size));
  EXPECT_THROW_NAMING(drdm::read_labels(path), path);
  EXPECT_NO_THROW(drdm::read_image(path));
}

// ---- displacement fields --------------------------------------------------------

TEST(ImageIo, FieldRoundTripKeepsVoxelField) {
  TempDir tmp;
  for (const auto& size : kSizes) {
    const auto geometry = rotated_geometry(size);
    const auto field = random_field(size, 7);
    const auto d = static_cast<int64_t>(size.size());
    for (const std::string ext : {".nii.gz", ".mha", ".nrrd"}) {
      SCOPED_TRACE(std::to_string(d) + "D " + ext);
      const auto path = tmp.path("field" + ext);
      drdm::write_field(path, field, geometry);
      const auto info = drdm::read_image_info(path);
      EXPECT_EQ(info.components, d);
      EXPECT_EQ(info.pixel_type, PixelType::kFloat32);
      expect_geometry_near(info.geometry, geometry);
      const auto back = drdm::read_field(path);
      EXPECT_EQ(back.data.scalar_type(), at::kFloat);
      ASSERT_EQ(back.data.sizes(), field.sizes());
      EXPECT_LT((back.data - field).abs().max().item<double>(), 1e-5);
      expect_geometry_near(back.geometry, geometry);
    }
  }
}

// A constant voxel field u = (u_D, u_H, u_W) is stored as M (u_W, u_H, u_D) mm
// with M = direction * diag(spacing): checked on the raw NIfTI data, which
// holds one component after the other.
TEST(ImageIo, FieldIsStoredInPhysicalMillimetres) {
  TempDir tmp;
  for (const auto& size : kSizes) {
    for (bool rotated : {false, true}) {
      const auto d = static_cast<int64_t>(size.size());
      SCOPED_TRACE(std::to_string(d) + (rotated ? "D rotated" : "D axis-aligned"));
      auto geometry = rotated_geometry(size);
      if (!rotated) geometry.direction = Geometry::identity(size).direction;
      const std::vector<double> u_tensor =
          d == 3 ? std::vector<double>{-0.5, 0.25, 1.0} : std::vector<double>{0.25, 1.0};
      auto field = at::empty(shape_of(size, d), at::kFloat);
      for (int64_t i = 0; i < d; ++i) field.select(1, i).fill_(u_tensor[i]);
      std::vector<double> want(d, 0.0);  // physical, ITK order
      for (int64_t r = 0; r < d; ++r)
        for (int64_t k = 0; k < d; ++k)
          want[r] += geometry.direction[r * d + k] * geometry.spacing[k] * u_tensor[d - 1 - k];
      if (!rotated && d == 3) {  // the analytic case, spelled out
        EXPECT_DOUBLE_EQ(want[0], 1.0 * 0.8);
        EXPECT_DOUBLE_EQ(want[1], 0.25 * 1.3);
        EXPECT_DOUBLE_EQ(want[2], -0.5 * 2.1);
      }
      const auto path = tmp.path("field.nii");
      drdm::write_field(path, field, geometry);
      EXPECT_EQ(drdm::read_image_info(path).components, d);
      const auto raw = read_raw_nifti(path);
      ASSERT_FALSE(raw.values.empty()) << "expected an uncompressed little-endian NIfTI-1 file";
      EXPECT_EQ(raw.datatype, 16);
      EXPECT_EQ(raw.dim[5], d) << "vector components are NIfTI's 5th dimension";
      const int64_t n = field[0][0].numel();
      ASSERT_EQ(static_cast<int64_t>(raw.values.size()), n * d);
      for (int64_t c = 0; c < d; ++c)
        for (int64_t i = 0; i < n; i += 7)
          ASSERT_NEAR(raw.values[c * n + i], want[c], 1e-6) << "component " << c;
      EXPECT_TRUE(at::allclose(drdm::read_field(path).data, field, 0, 1e-5));
    }
  }
}

// ---- single-slice volumes: 2D fields on the in-plane grid --------------------

TEST(ImageIo, SingleSliceAxisIsTheOnlyAxisOfSizeOne) {
  EXPECT_EQ(Geometry::identity({1, 6, 5}).single_slice_axis(), 0);  // 5 x 6 x 1 (ITK)
  EXPECT_EQ(Geometry::identity({6, 1, 5}).single_slice_axis(), 1);
  EXPECT_EQ(Geometry::identity({6, 5, 1}).single_slice_axis(), 2);
  EXPECT_EQ(Geometry::identity({1, 1, 5}).single_slice_axis(), -1);  // two axes of size 1
  EXPECT_EQ(Geometry::identity({4, 5, 6}).single_slice_axis(), -1);
  EXPECT_EQ(Geometry::identity({1, 7}).single_slice_axis(), -1);  // already 2D
}

// Dropping ITK axis k removes entry k of size, spacing and origin, and row
// and column k of the direction (entries 1..9 show which ones are kept).
TEST(ImageIo, SqueezeSingleSliceKeepsTheInPlaneGeometry) {
  struct Case {
    std::vector<int64_t> tensor_size;
    std::vector<int64_t> size;
    std::vector<double> spacing, origin, direction;
  };
  const std::vector<Case> cases = {
      {{1, 6, 5}, {5, 6}, {0.8, 1.3}, {-12.5, 33.25}, {1, 2, 4, 5}},  // ITK z dropped
      {{6, 1, 5}, {5, 6}, {0.8, 2.1}, {-12.5, 7.75}, {1, 3, 7, 9}},   // ITK y dropped
      {{6, 5, 1}, {5, 6}, {1.3, 2.1}, {33.25, 7.75}, {5, 6, 8, 9}},   // ITK x dropped
  };
  for (const auto& c : cases) {
    Geometry g = Geometry::identity(c.tensor_size);
    g.spacing = {0.8, 1.3, 2.1};
    g.origin = {-12.5, 33.25, 7.75};
    g.direction = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    const Geometry s = g.squeeze_single_slice();
    EXPECT_EQ(s.size, c.size);
    EXPECT_EQ(s.spacing, c.spacing);
    EXPECT_EQ(s.origin, c.origin);
    EXPECT_EQ(s.direction, c.direction);
  }
  const auto volume = rotated_geometry({4, 5, 6});
  const auto squeezed = volume.squeeze_single_slice();
  EXPECT_EQ(squeezed.size, volume.size) << "not a single slice: unchanged";
  EXPECT_EQ(squeezed.direction, volume.direction);
}

// The 3D field of a 256x256x1-like volume loses its through-plane component
// and its size-1 axis; other grids keep their field.
TEST(ImageIo, SqueezeSingleSliceFieldDropsTheThroughPlaneComponent) {
  for (int64_t axis = 0; axis < 3; ++axis) {
    SCOPED_TRACE("slice axis " + std::to_string(axis));
    std::vector<int64_t> size{4, 6, 5};
    size[static_cast<size_t>(axis)] = 1;
    const auto geometry = Geometry::identity(size);
    auto field = at::empty({2, 3, size[0], size[1], size[2]});
    for (int64_t i = 0; i < 3; ++i) field.select(1, i).fill_(10.0 * (i + 1));
    field[1].add_(1.0);  // the batch stays in order
    const auto out = drdm::squeeze_single_slice_field(field, geometry);
    std::vector<int64_t> plane = size;
    plane.erase(plane.begin() + axis);
    ASSERT_EQ(out.data.sizes(), at::IntArrayRef({2, 2, plane[0], plane[1]}));
    EXPECT_EQ(out.geometry.tensor_size(), plane);
    int64_t k = 0;
    for (int64_t i = 0; i < 3; ++i) {
      if (i == axis) continue;
      EXPECT_TRUE(out.data[0][k].eq(10.0 * (i + 1)).all().item<bool>()) << "component " << i;
      EXPECT_TRUE(out.data[1][k].eq(10.0 * (i + 1) + 1).all().item<bool>()) << "component " << i;
      ++k;
    }
    EXPECT_THROW(drdm::squeeze_single_slice_field(field.narrow(1, 0, 2), geometry), std::exception);
  }
  const auto field = random_field({4, 5, 6}, 3);
  const auto out = drdm::squeeze_single_slice_field(field, Geometry::identity({4, 5, 6}));
  EXPECT_TRUE(out.data.equal(field));
  EXPECT_EQ(out.geometry.size, (std::vector<int64_t>{6, 5, 4}));
}

// The 2D field written for a single-slice volume holds, in mm, the in-plane
// components of the volume's own physical displacement: the slice's direction
// is a rotation about its normal (z) with x and y flipped, as in JSRT's files.
TEST(ImageIo, SingleSliceFieldIsWrittenAs2DInMillimetres) {
  TempDir tmp;
  const std::vector<int64_t> size{1, 6, 5};  // ITK 5 x 6 x 1
  Geometry volume = rotated_geometry(size);
  const double c = std::cos(0.5), s = std::sin(0.5);
  volume.direction = {-c, s, 0, -s, -c, 0, 0, 0, 1};
  const std::vector<double> u_tensor{0.0, 0.25, 1.0};  // D (through-plane), H, W voxels
  auto field = at::empty(shape_of(size, 3), at::kFloat);
  for (int64_t i = 0; i < 3; ++i) field.select(1, i).fill_(u_tensor[static_cast<size_t>(i)]);
  std::vector<double> want(3, 0.0);  // the volume's physical displacement, ITK order
  for (size_t r = 0; r < 3; ++r)
    for (size_t k = 0; k < 3; ++k)
      want[r] += volume.direction[r * 3 + k] * volume.spacing[k] * u_tensor[2 - k];
  EXPECT_DOUBLE_EQ(want[2], 0.0);
  const auto squeezed = drdm::squeeze_single_slice_field(field, volume);
  const auto path = tmp.path("field.nii");
  drdm::write_field(path, squeezed.data, squeezed.geometry);
  const auto info = drdm::read_image_info(path);
  EXPECT_EQ(info.geometry.dimension(), 2);
  EXPECT_EQ(info.components, 2);
  expect_geometry_near(info.geometry, volume.squeeze_single_slice());
  const auto raw = read_raw_nifti(path);
  ASSERT_EQ(raw.values.size(), 2u * 5 * 6);
  for (size_t comp = 0; comp < 2; ++comp)
    for (size_t i = 0; i < 30; ++i)
      ASSERT_NEAR(raw.values[comp * 30 + i], want[comp], 1e-6) << "component " << comp;
  const auto back = drdm::read_field(path);
  ASSERT_EQ(back.data.sizes(), at::IntArrayRef({1, 2, 6, 5}));
  EXPECT_TRUE(at::allclose(back.data, field.select(2, 0).narrow(1, 1, 2), 0, 1e-5));
}

// ---- errors -------------------------------------------------------------------

TEST(ImageIo, ReadErrorsNameTheFile) {
  TempDir tmp;
  const auto missing = tmp.path("missing.nii.gz");
  EXPECT_THROW_NAMING(drdm::read_image(missing), missing);
  EXPECT_THROW_NAMING(drdm::read_image_info(missing), missing);
  EXPECT_THROW_NAMING(drdm::read_labels(missing), missing);
  EXPECT_THROW_NAMING(drdm::read_field(missing), missing);

  const auto folder = tmp.path("folder.nii.gz");
  fs::create_directory(folder);
  EXPECT_THROW_NAMING(drdm::read_image(folder), folder);
  EXPECT_THROW_NAMING(drdm::read_field(folder), folder);

  const auto corrupt = tmp.path("corrupt.nii.gz");
  {
    std::mt19937 rng(3);
    std::ofstream f(corrupt, std::ios::binary);
    for (int i = 0; i < 4096; ++i) f.put(static_cast<char>(rng() & 0xff));
  }
  EXPECT_THROW_NAMING(drdm::read_image(corrupt), corrupt);
  EXPECT_THROW_NAMING(drdm::read_image_info(corrupt), corrupt);

  // Data cut short (ITK 5.2 alone returns zeros or garbage for NIfTI and MetaImage).
  const std::vector<int64_t> size{4, 5, 6};
  for (const std::string ext : {".nii", ".nii.gz", ".mha", ".mhd", ".nrrd"}) {
    const auto truncated = tmp.path("truncated" + ext);
    drdm::write_image(truncated, pattern(size, PixelType::kFloat32), rotated_geometry(size));
    const auto data_file = ext == ".mhd" ? tmp.path("truncated.zraw") : truncated;
    fs::resize_file(data_file, fs::file_size(data_file) * 2 / 3);
    EXPECT_THROW_NAMING(drdm::read_image(truncated), truncated);
  }
  const auto truncated_field = tmp.path("truncated_field.nii.gz");
  drdm::write_field(truncated_field, random_field(size, 1), rotated_geometry(size));
  fs::resize_file(truncated_field, fs::file_size(truncated_field) - 16);
  EXPECT_THROW_NAMING(drdm::read_field(truncated_field), truncated_field);

  const std::vector<float> sixteen(16, 1.0f);
  const auto four_d = tmp.path("four_d.mha");
  write_raw_mha(four_d, "NDims = 4\nDimSize = 2 2 2 2\nElementType = MET_FLOAT\n", sixteen.data(),
                64);
  EXPECT_THROW_NAMING(drdm::read_image(four_d), four_d);
  EXPECT_THROW_NAMING(drdm::read_image_info(four_d), four_d);
  // A trailing axis of size 1 (e.g. a single time point) is harmless.
  const auto four_d_one = tmp.path("four_d_one.mha");
  write_raw_mha(four_d_one, "NDims = 4\nDimSize = 2 2 4 1\nElementType = MET_FLOAT\n",
                sixteen.data(), 64);
  EXPECT_EQ(drdm::read_image(four_d_one).data.sizes(), at::IntArrayRef({1, 1, 4, 2, 2}));

  std::vector<float> with_nan(8, 2.0f);
  with_nan[5] = std::numeric_limits<float>::quiet_NaN();
  const auto nan_file = tmp.path("nan.mha");
  write_raw_mha(nan_file, "NDims = 3\nDimSize = 2 2 2\nElementType = MET_FLOAT\n", with_nan.data(),
                32);
  EXPECT_THROW_NAMING(drdm::read_image(nan_file), nan_file);
  EXPECT_THROW_NAMING(drdm::read_labels(nan_file), nan_file);
  with_nan[5] = std::numeric_limits<float>::infinity();
  const auto inf_file = tmp.path("inf.mha");
  write_raw_mha(inf_file, "NDims = 3\nDimSize = 2 2 2\nElementType = MET_FLOAT\n", with_nan.data(),
                32);
  EXPECT_THROW_NAMING(drdm::read_image(inf_file), inf_file);

  // Vectors where scalars are expected, and the other way round.
  const auto field_file = tmp.path("field.nii.gz");
  drdm::write_field(field_file, random_field(size, 1), rotated_geometry(size));
  EXPECT_THROW_NAMING(drdm::read_image(field_file), field_file);
  EXPECT_THROW_NAMING(drdm::read_labels(field_file), field_file);
  const auto scalar_file = tmp.path("scalar.nii.gz");
  drdm::write_image(scalar_file, pattern(size, PixelType::kFloat32), rotated_geometry(size));
  EXPECT_THROW_NAMING(drdm::read_field(scalar_file), scalar_file);
  // A 2-vector on a 3D grid is not a 3D displacement field.
  std::vector<float> vec2(2 * 8, 0.5f);
  const auto wrong_components = tmp.path("vec2_on_3d.mha");
  write_raw_mha(
      wrong_components,
      "NDims = 3\nDimSize = 2 2 2\nElementNumberOfChannels = 2\nElementType = MET_FLOAT\n",
      vec2.data(), vec2.size() * sizeof(float));
  EXPECT_THROW_NAMING(drdm::read_field(wrong_components), wrong_components);
}

TEST(ImageIo, WriteRejectsMismatchedGeometryAndLeavesNothing) {
  TempDir tmp;
  const std::vector<int64_t> size{4, 6};
  const auto values = pattern(size, PixelType::kFloat32);
  const auto wrong_size = Geometry::identity({4, 5});
  const auto wrong_dim = Geometry::identity({1, 4, 6});
  auto bad_spacing = Geometry::identity(size);
  bad_spacing.spacing[0] = 0.0;
  auto singular = Geometry::identity(size);
  singular.direction = {1, 0, 1, 0};
  const auto path = tmp.path("out.nii.gz");
  EXPECT_THROW_NAMING(drdm::write_image(path, values, wrong_size), path);
  EXPECT_THROW_NAMING(drdm::write_image(path, values, wrong_dim), path);
  EXPECT_THROW_NAMING(drdm::write_image(path, values, bad_spacing), path);
  EXPECT_THROW_NAMING(drdm::write_image(path, values, singular), path);
  EXPECT_THROW_NAMING(
      drdm::write_image(path, at::cat({values, values}, 1), Geometry::identity(size)), path);
  EXPECT_THROW_NAMING(drdm::write_labels(path, values.to(at::kLong), wrong_size), path);
  EXPECT_THROW_NAMING(drdm::write_field(path, random_field(size, 1), wrong_size), path);
  EXPECT_THROW_NAMING(
      drdm::write_field(path, random_field(size, 1).narrow(1, 0, 1), Geometry::identity(size)),
      path);
  EXPECT_THROW_NAMING(drdm::write_field(path, at::zeros({1, 3, 4, 6}), Geometry::identity(size)),
                      path);
  EXPECT_TRUE(tmp.entries().empty());
}

TEST(ImageIo, FailedWritesLeaveNoFileOrTemporaryFolder) {
  TempDir tmp;
  const std::vector<int64_t> size{4, 6};
  const auto geometry = Geometry::identity(size);
  auto with_nan = pattern(size, PixelType::kFloat32);
  with_nan.view(-1)[3] = std::numeric_limits<float>::quiet_NaN();
  const auto nan_path = tmp.path("nan.nii.gz");
  EXPECT_THROW_NAMING(drdm::write_image(nan_path, with_nan, geometry), nan_path);
  auto bad_field = random_field(size, 2);
  bad_field.view(-1)[0] = std::numeric_limits<float>::infinity();
  EXPECT_THROW_NAMING(drdm::write_field(nan_path, bad_field, geometry), nan_path);
  const auto png = tmp.path("float.png");
  EXPECT_THROW_NAMING(drdm::write_image(png, pattern(size, PixelType::kUInt8), geometry), png);
  // Fails inside ITK's writer, after the temporary folder exists.
  const auto unknown = tmp.path("image.unknown-format");
  EXPECT_THROW_NAMING(drdm::write_image(unknown, pattern(size, PixelType::kUInt8), geometry),
                      unknown);
  const auto png3d = tmp.path("volume.png");  // would keep one slice silently
  const std::vector<int64_t> size3{3, 4, 6};
  EXPECT_THROW_NAMING(drdm::write_image(png3d, pattern(size3, PixelType::kUInt8),
                                        Geometry::identity(size3), PixelType::kUInt8),
                      png3d);
  const auto no_folder = tmp.path("no/such/folder/out.nii.gz");
  EXPECT_THROW_NAMING(drdm::write_image(no_folder, pattern(size, PixelType::kUInt8), geometry),
                      no_folder);
  EXPECT_TRUE(tmp.entries().empty())
      << "left behind: " << (tmp.entries().empty() ? "" : tmp.entries()[0]);
}

TEST(ImageIo, WritingOverAnExistingFileReplacesIt) {
  TempDir tmp;
  const std::vector<int64_t> size{4, 5, 6};
  const auto geometry = rotated_geometry(size);
  const auto a = pattern(size, PixelType::kFloat32);
  const auto b = a * 2 + 1;
  for (const std::string name : {"over.nii.gz", "over.mhd"}) {
    SCOPED_TRACE(name);
    const auto path = tmp.path(name);
    drdm::write_image(path, a, geometry);
    const auto before = tmp.entries();
    drdm::write_image(path, b, geometry);
    EXPECT_EQ(tmp.entries(), before) << "no extra or temporary files";
    EXPECT_TRUE(at::equal(drdm::read_image(path).data, b));
  }
  // A field over an image of the same name, then an image over the field.
  const auto path = tmp.path("over.nrrd");
  drdm::write_image(path, a, geometry);
  drdm::write_field(path, random_field(size, 4), geometry);
  EXPECT_EQ(drdm::read_image_info(path).components, 3);
  drdm::write_image(path, b, geometry);
  EXPECT_TRUE(at::equal(drdm::read_image(path).data, b));
}

// ---- what ITK 5.2 does not check (issue 12): raw bytes of the files ----------

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// Offsets in the NIfTI-1 header (nifti1.h).
constexpr size_t kIntentCode = 68, kQformCode = 252, kSformCode = 254;

int16_t raw_int16(const std::string& bytes, size_t offset) {
  int16_t v = 0;
  std::memcpy(&v, bytes.data() + offset, 2);
  return v;
}

void put_int16(std::string& bytes, size_t offset, int16_t v) {
  std::memcpy(bytes.data() + offset, &v, 2);
}

// A gzip member that stores `data` in uncompressed deflate blocks, with the
// given CRC-32 in its trailer (RFC 1951, 1952).
std::string stored_gzip(const std::string& data, uint32_t crc) {
  std::string gz("\x1f\x8b\x08\0\0\0\0\0\0\xff", 10);
  for (size_t at = 0; at < data.size(); at += 65535) {
    const auto n = static_cast<uint16_t>(std::min<size_t>(65535, data.size() - at));
    gz.push_back(at + n == data.size() ? '\x01' : '\x00');  // BFINAL on the last block
    for (uint16_t v : {n, static_cast<uint16_t>(~n)})
      gz += {static_cast<char>(v & 0xff), static_cast<char>(v >> 8)};
    gz += data.substr(at, n);
  }
  for (uint32_t v : {crc, static_cast<uint32_t>(data.size())})
    for (int k = 0; k < 4; ++k) gz.push_back(static_cast<char>((v >> (8 * k)) & 0xff));
  return gz;
}

uint32_t crc32_of(const std::string& s) {
  uint32_t c = 0xffffffffu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return c ^ 0xffffffffu;
}

// ITK 5.2 stops inflating once it has the voxels and never reaches a gzip
// member's trailer, so damage there (or a missing trailer) went unnoticed.
// The files are large (~400 kB): zlib checks a small file's trailer as soon
// as ITK reads its header.
TEST(ImageIo, GzipIntegrityIsChecked) {
  TempDir tmp;
  const std::vector<int64_t> size{32, 48, 64};
  const auto geometry = rotated_geometry(size);
  auto gen = at::detail::createCPUGenerator(11);
  const auto values = at::rand(shape_of(size), gen, at::TensorOptions().dtype(at::kFloat));
  drdm::write_image(tmp.path("good.nii"), values, geometry);
  const auto nii = read_bytes(tmp.path("good.nii"));
  const auto good = tmp.path("stored.nii.gz");
  write_bytes(good, stored_gzip(nii, crc32_of(nii)));
  EXPECT_TRUE(at::equal(drdm::read_image(good).data, values));

  // One bit flipped in the stored voxel data: only the CRC-32 can tell.
  auto flipped = nii;
  flipped[nii.size() - 10] ^= 0x04;
  const auto bad_crc = tmp.path("bad_crc.nii.gz");
  write_bytes(bad_crc, stored_gzip(flipped, crc32_of(nii)));
  EXPECT_THROW_NAMING(drdm::read_image(bad_crc), bad_crc);
  EXPECT_THROW_NAMING(drdm::read_labels(bad_crc), bad_crc);

  // Files written by ITK: a bit flipped in the deflated data, in the CRC-32,
  // in the length; no trailer at all.
  drdm::write_image(tmp.path("itk.nii.gz"), values, geometry);
  drdm::write_field(tmp.path("field.nii.gz"), random_field(size, 3), geometry);
  for (const std::string source : {"itk.nii.gz", "field.nii.gz"}) {
    const auto gz = read_bytes(tmp.path(source));
    auto read = [&](const std::string& path) {
      if (source == "field.nii.gz") return drdm::read_field(path);
      return drdm::read_image(path);
    };
    for (size_t at_byte : {gz.size() / 2, gz.size() - 8, gz.size() - 1}) {
      SCOPED_TRACE(source + " byte " + std::to_string(at_byte));
      auto damaged = gz;
      damaged[at_byte] ^= 0x01;
      const auto path = tmp.path("damaged_" + std::to_string(at_byte) + "_" + source);
      write_bytes(path, damaged);
      EXPECT_THROW_NAMING(read(path), path);
    }
    const auto cut = tmp.path("no_trailer_" + source);
    write_bytes(cut, gz.substr(0, gz.size() - 8));
    EXPECT_THROW_NAMING(read(cut), cut);
  }
  // Compressed MetaImage data is a zlib stream: its Adler-32 is its last 4 bytes.
  const auto mha = tmp.path("compressed.mha");
  drdm::write_image(mha, values, geometry);
  auto bytes = read_bytes(mha);
  ASSERT_NE(bytes.find("CompressedData = True"), std::string::npos);
  bytes.back() ^= 0x01;
  write_bytes(mha, bytes);
  EXPECT_THROW_NAMING(drdm::read_image(mha), mha);
}

// ITK 5.2's NIfTI reader turns NaN and Inf into 0; the raw data is checked.
TEST(ImageIo, NanAndInfInNiftiAreRefused) {
  TempDir tmp;
  const std::vector<int64_t> size{4, 5, 6};
  const auto geometry = rotated_geometry(size);
  const auto values = pattern(size, PixelType::kFloat32);
  for (const auto type : {PixelType::kFloat32, PixelType::kFloat64}) {
    drdm::write_image(tmp.path("finite.nii"), values, geometry, type);
    const auto nii = read_bytes(tmp.path("finite.nii"));
    const auto offset = nii.size() - values.numel() * (type == PixelType::kFloat32 ? 4 : 8);
    for (const double bad :
         {std::numeric_limits<double>::quiet_NaN(), -std::numeric_limits<double>::infinity()}) {
      auto raw = nii;
      const size_t voxel = 17;
      if (type == PixelType::kFloat32) {
        const auto f = static_cast<float>(bad);
        std::memcpy(raw.data() + offset + 4 * voxel, &f, 4);
      } else {
        std::memcpy(raw.data() + offset + 8 * voxel, &bad, 8);
      }
      const auto path =
          tmp.path("bad_" + to_string(type) + (std::isnan(bad) ? "_nan" : "_inf") + ".nii");
      write_bytes(path, raw);
      EXPECT_THROW_NAMING(drdm::read_image(path), path);
      EXPECT_THROW_NAMING(drdm::read_labels(path), path);
      try {
        drdm::read_image(path);
      } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("NaN or Inf"), std::string::npos) << e.what();
      }
    }
  }
  // A field: components are NIfTI's 5th dimension, one after the other.
  drdm::write_field(tmp.path("field.nii"), random_field(size, 5), geometry);
  auto raw = read_bytes(tmp.path("field.nii"));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(raw.data() + raw.size() - 4 * 3, &nan, 4);
  const auto field = tmp.path("nan_field.nii");
  write_bytes(field, raw);
  EXPECT_THROW_NAMING(drdm::read_field(field), field);
}

// Any axis of 1 voxel (but the one of a single-slice volume) makes fields
// that cannot be warped with or written back (ITK drops the axis).
TEST(ImageIo, DegenerateGridsAreRefused) {
  TempDir tmp;
  const std::vector<std::vector<int64_t>> refused = {{1, 1, 1}, {2, 1, 1}, {1, 1, 9}, {1, 9, 1},
                                                     {1, 1},    {1, 2},    {7, 1}};
  for (const auto& size : refused) {
    const auto path =
        tmp.path("degenerate_" + std::to_string(size.size()) + "d_" + std::to_string(size[0]) +
                 "_" + std::to_string(size.back()) + ".nii.gz");
    drdm::write_image(path, pattern(size, PixelType::kFloat32), Geometry::identity(size));
    EXPECT_THROW_NAMING(drdm::read_image(path), path);
    EXPECT_THROW_NAMING(drdm::read_image_info(path), path);
    EXPECT_THROW_NAMING(drdm::read_labels(path), path);
    try {
      drdm::read_image_info(path);
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("at least 2 voxels"), std::string::npos) << e.what();
    }
  }
  const std::vector<std::vector<int64_t>> accepted = {
      {2, 2, 2}, {1, 2, 2}, {2, 1, 2}, {5, 6, 1}, {2, 2}};
  for (const auto& size : accepted) {
    const auto path = tmp.path("small.nii.gz");
    drdm::write_image(path, pattern(size, PixelType::kFloat32), Geometry::identity(size));
    EXPECT_EQ(drdm::read_image(path).geometry.tensor_size(), size);
  }
  EXPECT_THROW_NAMING(drdm::check_grid_size(Geometry::identity({3, 1, 1}), "x.nii"), "x.nii");
}

// ANTs and nibabel write fields as 5D NIfTI [x, y, z, 1, d] with intent
// DISPVECT (1006); ITK writes the same layout with intent VECTOR (1007).
TEST(ImageIo, ReadsDispvectNiftiFields) {
  TempDir tmp;
  for (const auto& size : kSizes) {
    const auto d = static_cast<int64_t>(size.size());
    SCOPED_TRACE(std::to_string(d) + "D");
    const auto geometry = rotated_geometry(size);
    const auto field = random_field(size, 9);
    drdm::write_field(tmp.path("vector.nii"), field, geometry);
    auto raw = read_bytes(tmp.path("vector.nii"));
    ASSERT_EQ(raw_int16(raw, kIntentCode), 1007);
    ASSERT_EQ(raw_int16(raw, 40), 5) << "dim[0]";
    put_int16(raw, kIntentCode, 1006);
    const auto path = tmp.path("dispvect.nii");
    write_bytes(path, raw);
    const auto back = drdm::read_field(path);
    EXPECT_TRUE(at::allclose(back.data, field, 0, 1e-5));
    expect_geometry_near(back.geometry, geometry);
    EXPECT_EQ(drdm::read_image_info(path).components, d);
    EXPECT_THROW_NAMING(drdm::read_image(path), path);  // a vector image, not a scalar one
  }
}

// ITK 5.2 writes qform_code = sform_code = 1; the input's codes are kept.
TEST(ImageIo, NiftiQformAndSformCodesAreKept) {
  TempDir tmp;
  const std::vector<int64_t> size{4, 5, 6};
  const auto geometry = rotated_geometry(size);
  const auto values = pattern(size, PixelType::kFloat32);
  drdm::write_image(tmp.path("in.nii"), values, geometry);
  const auto itk_written = read_bytes(tmp.path("in.nii"));
  EXPECT_EQ(raw_int16(itk_written, kQformCode), 1);
  EXPECT_EQ(raw_int16(itk_written, kSformCode), 1);
  struct Codes {
    int16_t qform, sform, want_qform, want_sform;
  };
  // Both 0: no orientation stored; ITK's explicit 1/1 keeps our geometry readable.
  for (const Codes c :
       {Codes{0, 2, 0, 2}, Codes{2, 0, 2, 0}, Codes{1, 4, 1, 4}, Codes{0, 0, 1, 1}}) {
    SCOPED_TRACE(std::to_string(c.qform) + "/" + std::to_string(c.sform));
    auto raw = itk_written;
    put_int16(raw, kQformCode, c.qform);
    put_int16(raw, kSformCode, c.sform);
    const auto in = tmp.path("coded.nii");
    write_bytes(in, raw);
    const auto image = drdm::read_image(in);
    EXPECT_EQ(image.geometry.qform_code, c.qform);
    EXPECT_EQ(image.geometry.sform_code, c.sform);
    drdm::write_image(tmp.path("out.nii"), image.data, image.geometry);
    const auto out = read_bytes(tmp.path("out.nii"));
    EXPECT_EQ(raw_int16(out, kQformCode), c.want_qform);
    EXPECT_EQ(raw_int16(out, kSformCode), c.want_sform);
    // Compressed outputs and fields too; the geometry is unchanged.
    drdm::write_image(tmp.path("out.nii.gz"), image.data, image.geometry);
    drdm::write_field(tmp.path("field.nii.gz"), random_field(size, 1), image.geometry);
    for (const auto& path : {tmp.path("out.nii.gz"), tmp.path("field.nii.gz")}) {
      const auto info = drdm::read_image_info(path);
      EXPECT_EQ(info.geometry.qform_code, c.want_qform) << path;
      EXPECT_EQ(info.geometry.sform_code, c.want_sform) << path;
      // 0/0: ITK reads the input's voxel sizes only (NIfTI method 1), and so the output.
      expect_geometry_near(info.geometry, image.geometry);
      if (c.qform || c.sform) expect_geometry_near(info.geometry, geometry);
    }
    EXPECT_TRUE(at::equal(drdm::read_image(tmp.path("out.nii.gz")).data, values));
  }
  // Other formats carry no codes.
  drdm::write_image(tmp.path("out.mha"), values, geometry);
  EXPECT_EQ(drdm::read_image(tmp.path("out.mha")).geometry.qform_code, -1);
}

// ---- real data (facts checked by hand with SimpleITK) ---------------------------

TEST(ImageIo, RealData) {
  const fs::path root = DRDM_TEST_DATA_DIR;
  const auto hippo = (root / "hippocampus/images/hippocampus_001.nii.gz").string();
  const auto hippo_labels = (root / "hippocampus/labels/hippocampus_001.nii.gz").string();
  const auto acdc = (root / "acdc/images/patient001_frame01.nii.gz").string();
  const auto acdc_labels = (root / "acdc/labels/patient001_frame01.nii.gz").string();
  for (const auto& p : {hippo, hippo_labels, acdc, acdc_labels})
    if (!fs::exists(p)) GTEST_SKIP() << "no test data at " << p;

  const auto h = drdm::read_image(hippo);
  EXPECT_EQ(h.pixel_type, PixelType::kUInt8);
  ASSERT_EQ(h.data.sizes(), at::IntArrayRef({1, 1, 64, 64, 64}));
  // SimpleITK's GetArrayFromImage is [z][y][x], as ours is.
  EXPECT_EQ(h.data[0][0][10][20][30].item<float>(), 45);
  EXPECT_EQ(h.data[0][0][40][5][60].item<float>(), 23);
  EXPECT_EQ(h.data[0][0][63][0][1].item<float>(), 98);
  EXPECT_EQ(h.data.to(at::kDouble).sum().item<double>(), 16227468.0);
  EXPECT_EQ(h.geometry.spacing, (std::vector<double>{1, 1, 1}));
  EXPECT_EQ(h.geometry.direction, (std::vector<double>{-1, 0, 0, 0, -1, 0, 0, 0, 1}));
  const auto hl = drdm::read_labels(hippo_labels);
  EXPECT_EQ(hl.data.scalar_type(), at::kLong);
  EXPECT_EQ(hl.data.min().item<int64_t>(), 0);
  EXPECT_EQ(hl.data.max().item<int64_t>(), 2);
  EXPECT_EQ(hl.data.sum().item<int64_t>(), 4572);

  const auto a = drdm::read_image(acdc);
  EXPECT_EQ(a.pixel_type, PixelType::kUInt16);
  EXPECT_EQ(a.geometry.size, (std::vector<int64_t>{216, 256, 10}));
  ASSERT_EQ(a.data.sizes(), at::IntArrayRef({1, 1, 10, 256, 216}));
  EXPECT_EQ(a.data[0][0][5][100][150].item<float>(), 44);
  EXPECT_EQ(a.data[0][0][9][200][10].item<float>(), 2);
  EXPECT_EQ(a.data[0][0][0][128][108].item<float>(), 315);
  EXPECT_EQ(a.data.to(at::kDouble).sum().item<double>(), 43101591.0);
  const auto al = drdm::read_labels(acdc_labels);
  EXPECT_EQ(al.pixel_type, PixelType::kUInt8);
  EXPECT_EQ(al.data.max().item<int64_t>(), 3);
  EXPECT_EQ(al.data.sum().item<int64_t>(), 55491);
  expect_geometry_near(al.geometry, a.geometry, 0);
}

}  // namespace

// ---- NIfTI-1 files built byte by byte ------------------------------------------
// The NIfTI-1 standard is the truth here: every datatype a scan uses, both
// byte orders, plain and gzip, unscaled (scl_slope 0 or 1) and scaled (value
// = raw * scl_slope + scl_inter), 2D and 3D. Geometry: sform only, so that
// ITK's LPS grid is spacing = pixdim, origin = (-x0, -y0, z0), direction
// diag(-1, -1, 1).
namespace {

struct NiftiCase {
  int datatype, bitpix;
  PixelType pixel;
  std::vector<double> values;  // raw values, exact in the type and in double
};

template <typename T>
void put(std::string& b, size_t offset, T v, bool big) {
  unsigned char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  if (big) std::reverse(bytes, bytes + sizeof(T));
  std::memcpy(&b[offset], bytes, sizeof(T));
}

std::string raw_value(const NiftiCase& c, double v, bool big) {
  std::string out(static_cast<size_t>(c.bitpix / 8), '\0');
  switch (c.datatype) {
    case 2:
      put<uint8_t>(out, 0, static_cast<uint8_t>(v), big);
      break;
    case 256:
      put<int8_t>(out, 0, static_cast<int8_t>(v), big);
      break;
    case 4:
      put<int16_t>(out, 0, static_cast<int16_t>(v), big);
      break;
    case 512:
      put<uint16_t>(out, 0, static_cast<uint16_t>(v), big);
      break;
    case 8:
      put<int32_t>(out, 0, static_cast<int32_t>(v), big);
      break;
    case 768:
      put<uint32_t>(out, 0, static_cast<uint32_t>(v), big);
      break;
    case 1024:
      put<int64_t>(out, 0, static_cast<int64_t>(v), big);
      break;
    case 1280:
      put<uint64_t>(out, 0, static_cast<uint64_t>(v), big);
      break;
    case 16:
      put<float>(out, 0, static_cast<float>(v), big);
      break;
    case 64:
      put<double>(out, 0, v, big);
      break;
    default:
      throw std::logic_error("datatype");
  }
  return out;
}

/// A single-file NIfTI-1 image of `size` (x, y[, z]) holding `c.values` cyclically.
std::string nifti_bytes(const NiftiCase& c, const std::vector<int64_t>& size, bool big, float slope,
                        float inter) {
  std::string b(352, '\0');
  put<int32_t>(b, 0, 348, big);
  put<int16_t>(b, 40, static_cast<int16_t>(size.size()), big);
  for (size_t k = 0; k < size.size(); ++k)
    put<int16_t>(b, 42 + 2 * k, static_cast<int16_t>(size[k]), big);
  put<int16_t>(b, 70, static_cast<int16_t>(c.datatype), big);
  put<int16_t>(b, 72, static_cast<int16_t>(c.bitpix), big);
  const float pixdim[3] = {0.75f, 1.25f, 2.5f}, origin[3] = {10.0f, -20.0f, 30.0f};
  put<float>(b, 76, 1.0f, big);
  for (size_t k = 0; k < 3; ++k) put<float>(b, 80 + 4 * k, pixdim[k], big);
  put<float>(b, 108, 352.0f, big);
  put<float>(b, 112, slope, big);
  put<float>(b, 116, inter, big);
  put<int16_t>(b, 254, 1, big);  // sform_code: scanner
  for (size_t r = 0; r < 3; ++r) {
    put<float>(b, 280 + 16 * r + 4 * r, pixdim[r], big);
    put<float>(b, 280 + 16 * r + 12, origin[r], big);
  }
  std::memcpy(&b[344], "n+1\0", 4);
  int64_t n = 1;
  for (auto s : size) n *= s;
  for (int64_t i = 0; i < n; ++i)
    b += raw_value(c, c.values[static_cast<size_t>(i) % c.values.size()], big);
  return b;
}

void write_gzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

}  // namespace

TEST(ImageIo, NiftiOfEveryDatatypeByteOrderAndScalingReadsAsTheStandardSays) {
  TempDir tmp;
  const std::vector<NiftiCase> cases = {
      {2, 8, PixelType::kUInt8, {0, 1, 127, 200, 255}},
      {256, 8, PixelType::kInt8, {-128, -1, 0, 5, 127}},
      {4, 16, PixelType::kInt16, {-32768, -1024, 0, 3, 32767}},
      {512, 16, PixelType::kUInt16, {0, 1, 32767, 40000, 65535}},
      {8, 32, PixelType::kInt32, {-2147483648.0, -70000, 0, 9, 2147483647.0}},
      {768, 32, PixelType::kUInt32, {0, 7, 2147483648.0, 4000000000.0, 4294967295.0}},
      {1024, 64, PixelType::kInt64, {-9007199254740992.0, -3, 0, 11, 9007199254740992.0}},
      {1280, 64, PixelType::kUInt64, {0, 13, 4294967296.0, 9007199254740992.0}},
      {16, 32, PixelType::kFloat32, {-0x1p100, -0.5, 0, 0.125, 0x1.8p40}},  // exact in float
      {64, 64, PixelType::kFloat64, {-1e300, -0.25, 0, 1.0 / 3.0, 6.5e200}},
  };
  const std::vector<std::vector<int64_t>> sizes = {{5, 4, 3}, {6, 5}};
  const std::vector<std::pair<float, float>> scalings = {{0.0f, 0.0f}, {1.0f, 0.0f}, {2.5f, -3.0f}};
  for (const auto& c : cases)
    for (const auto& size : sizes)
      for (const bool big : {false, true})
        for (const auto& [slope, inter] : scalings)
          for (const bool gz : {false, true}) {
            const std::string name = "dt" + std::to_string(c.datatype) + "_" +
                                     std::to_string(size.size()) + "d" + (big ? "_be" : "_le") +
                                     "_s" + std::to_string(slope) + (gz ? ".nii.gz" : ".nii");
            SCOPED_TRACE(name);
            const auto bytes = nifti_bytes(c, size, big, slope, inter);
            const auto path = tmp.path(name);
            if (gz) {
              write_gzip(path, bytes);
            } else {
              write_bytes(path, bytes);
            }
            const bool scaled = slope != 0 && !(slope == 1 && inter == 0);
            std::vector<int64_t> shape{1, 1};
            for (auto it = size.rbegin(); it != size.rend(); ++it) shape.push_back(*it);
            int64_t n = 1;
            for (auto s : size) n *= s;
            auto expected = at::empty({n}, at::kDouble);
            for (int64_t i = 0; i < n; ++i) {
              const double v = c.values[static_cast<size_t>(i) % c.values.size()];
              expected[i] = scaled ? v * slope + inter : v;
            }
            expected = expected.view(shape);
            const auto image = drdm::read_image(path);
            EXPECT_TRUE(at::equal(image.data, expected.to(at::kFloat)))
                << (image.data.to(at::kDouble) - expected).abs().max().item<double>();
            if (!scaled) EXPECT_EQ(image.pixel_type, c.pixel);
            const auto& g = image.geometry;
            ASSERT_EQ(g.size, size);
            const double lps[3] = {-1, -1, 1}, pixdim[3] = {0.75, 1.25, 2.5},
                         origin[3] = {10, -20, 30};
            const size_t d = size.size();
            for (size_t k = 0; k < d; ++k) {
              EXPECT_DOUBLE_EQ(g.spacing[k], pixdim[k]);
              EXPECT_DOUBLE_EQ(g.origin[k], lps[k] * origin[k]);
              for (size_t j = 0; j < d; ++j)
                EXPECT_DOUBLE_EQ(g.direction[k * d + j], k == j ? lps[k] : 0.0);
            }
            const bool integral = c.pixel != PixelType::kFloat32 && c.pixel != PixelType::kFloat64;
            if (integral && !scaled)
              EXPECT_TRUE(at::equal(drdm::read_labels(path).data, expected.to(at::kLong)));
          }
}
