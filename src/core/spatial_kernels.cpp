// Direct CPU kernels for sampling an image at x + u(x), u in voxels (see
// spatial_kernels.h).
//
// Layout: input [Ni, C, P], field [Nf, d, P], output [N, C, P] contiguous, P
// voxels per channel. Work is split into rows (the last spatial axis) and each
// row into blocks of at most kBlock voxels. For a block, one pass per axis
// computes the two corner offsets and weights of every voxel (vectorisable:
// no branches, no calls); then one pass per channel gathers the 4 (2D) or 8
// (3D) corners and blends them. The weights of a corner outside the image
// (zero padding) are 0 and its offset is clamped into the image.

#include "core/spatial_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// Hot entry points: everything they call is inlined into them (flatten) and,
// with GCC on x86-64, compiled twice (AVX2 + FMA, and the baseline), picked
// at load time. The library still runs on any x86-64.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(__SANITIZE_ADDRESS__)
#define DRDM_HOT __attribute__((flatten, target_clones("arch=x86-64-v3", "default")))
#elif defined(__GNUC__)
#define DRDM_HOT __attribute__((flatten))
#else
#define DRDM_HOT
#endif
#if defined(__GNUC__)
#define DRDM_INLINE inline __attribute__((always_inline))
#define DRDM_LAMBDA_INLINE __attribute__((always_inline))
#else
#define DRDM_INLINE inline
#define DRDM_LAMBDA_INLINE
#endif

namespace drdm::detail {
namespace {

constexpr int64_t kBlock = 128;           // voxels per block of a row
constexpr int64_t kVoxelsPerTask = 4096;  // smallest share of work for a thread

std::atomic<int>& kernels_setting() {
  static std::atomic<int> setting{[] {
    const char* e = std::getenv("DRDM_SPATIAL_KERNELS");
    return (e && std::strcmp(e, "aten") == 0) ? 0 : 1;
  }()};
  return setting;
}

// Sizes of one sampling problem.
struct Geometry {
  int dims = 2;
  int64_t batch = 0, in_batch = 0, field_batch = 0, channels = 0;
  int64_t depth = 1, height = 1, width = 1;  // 2D: depth 1
  int64_t plane = 0;                         // voxels per channel
  int64_t rows() const { return depth * height; }
  int64_t in_sample(int64_t n) const { return in_batch == 1 ? 0 : n; }
  int64_t field_sample(int64_t n) const { return field_batch == 1 ? 0 : n; }
};

Geometry geometry_of(const at::Tensor& input, const at::Tensor& field) {
  Geometry g;
  g.dims = static_cast<int>(field.dim() - 2);
  g.in_batch = input.size(0);
  g.field_batch = field.size(0);
  g.batch = std::max(g.in_batch, g.field_batch);
  g.channels = input.size(1);
  if (g.dims == 3) g.depth = field.size(2);
  g.height = field.size(field.dim() - 2);
  g.width = field.size(field.dim() - 1);
  g.plane = g.depth * g.height * g.width;
  return g;
}

// Pointers and flags of one forward or backward pass.
template <typename T>
struct Job {
  Geometry g;
  bool linear = true, border = false;
  bool want_input = false, want_field = false;  // backward: which gradients
  bool add_field = false;  // forward: out[n, c] = field[n, c] + sample (C = d, linear)
  const T* in = nullptr;
  const T* field = nullptr;
  T* out = nullptr;         // forward: [N, C, P]
  const T* gout = nullptr;  // backward: [N, C, P]
  T* gin = nullptr;         // backward: [Ni, C, P], accumulated into
  T* gfield = nullptr;      // backward: [N, d, P]
};

// Rows of a sample are visited in tiles of kTileRows rows along y, each tile
// through all z before the next: the input planes a tile reads at one z are
// read again at the next z while still in cache.
constexpr int64_t kTileRows = 16;

// Calls f(n, z, y, voxel index p of the block start, x0, count) for the
// blocks of rows [begin, end) (rows numbered over the whole batch, tiled).
template <typename F>
DRDM_INLINE void for_each_block(const Geometry& g, int64_t begin, int64_t end, F&& f) {
  const int64_t tile = g.depth * kTileRows;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / g.rows(), q = r % g.rows();
    const int64_t t = q / tile, rows = std::min(kTileRows, g.height - t * kTileRows);
    const int64_t k = q - t * tile, z = k / rows, y = t * kTileRows + k % rows;
    const int64_t p = (z * g.height + y) * g.width;
    for (int64_t x0 = 0; x0 < g.width; x0 += kBlock)
      f(n, z, y, p + x0, x0, static_cast<int>(std::min(kBlock, g.width - x0)));
  }
}

// ------------------------------------------------------------------ axes

// Linear interpolation along one axis for a block: corner offsets (index *
// stride, always inside the image), weights, and the weights' derivatives by
// the coordinate (0 where the corner is outside, the coordinate clipped, or
// the axis has size 1).
template <typename T>
struct LinearAxis {
  alignas(64) int32_t o0[kBlock];
  alignas(64) int32_t o1[kBlock];
  alignas(64) T w0[kBlock];
  alignas(64) T w1[kBlock];
  alignas(64) T d0[kBlock];
  alignas(64) T d1[kBlock];
};

template <typename T, bool kGrad>
DRDM_INLINE void size_one_axis(int count, LinearAxis<T>& a) {
  for (int j = 0; j < count; ++j) {
    a.o0[j] = a.o1[j] = 0;
    a.w0[j] = T(1);
    a.w1[j] = T(0);
    if constexpr (kGrad) a.d0[j] = a.d1[j] = T(0);
  }
}

// Border: the coordinate is clipped to [0, n - 1] (as ATen's clip_coordinates;
// NaN becomes 0), so both corners are inside.
template <typename T, bool kGrad>
DRDM_INLINE void border_axis(const T* __restrict u, T base, T step, int count, int32_t n,
                             int32_t stride, LinearAxis<T>& a) {
  const T hi = static_cast<T>(n - 1);
  for (int j = 0; j < count; ++j) {
    const T c = base + step * static_cast<T>(j) + u[j];
    T cc = c > T(0) ? c : T(0);
    cc = cc < hi ? cc : hi;
    const int32_t i = static_cast<int32_t>(cc);
    const T f = cc - static_cast<T>(i);
    a.o0[j] = i * stride;
    a.o1[j] = std::min(i + 1, n - 1) * stride;
    a.w0[j] = T(1) - f;
    a.w1[j] = f;
    if constexpr (kGrad) {
      const auto inside =
          static_cast<T>(static_cast<int32_t>(c > T(0)) & static_cast<int32_t>(c < hi));
      a.d0[j] = -inside;
      a.d1[j] = inside;
    }
  }
}

// Zeros: corners outside [0, n - 1] get weight 0. The coordinate is first
// clamped to [-2, n + 1] (NaN to -2): outside that range both corners are
// outside anyway, and the integer conversion stays defined.
template <typename T, bool kGrad>
DRDM_INLINE void zeros_axis(const T* __restrict u, T base, T step, int count, int32_t n,
                            int32_t stride, LinearAxis<T>& a) {
  const T top = static_cast<T>(n + 1);
  for (int j = 0; j < count; ++j) {
    const T c = base + step * static_cast<T>(j) + u[j];
    T cc = c > T(-2) ? c : T(-2);
    cc = cc < top ? cc : top;
    const auto t = static_cast<int32_t>(cc);
    const int32_t i = t - static_cast<int32_t>(static_cast<T>(t) > cc);  // floor
    const T f = cc - static_cast<T>(i);
    // Masks as numbers, not bools: selects and bytes keep GCC from vectorising.
    const auto m0 = static_cast<T>(static_cast<int32_t>(i >= 0) & static_cast<int32_t>(i < n));
    const auto m1 = static_cast<T>(static_cast<int32_t>(i >= -1) & static_cast<int32_t>(i < n - 1));
    a.o0[j] = std::min(std::max(i, 0), n - 1) * stride;
    a.o1[j] = std::min(std::max(i + 1, 0), n - 1) * stride;
    a.w0[j] = (T(1) - f) * m0;
    a.w1[j] = f * m1;
    if constexpr (kGrad) {
      a.d0[j] = -m0;
      a.d1[j] = m1;
    }
  }
}

// One axis of a block: coordinate base + step * j + u[j] along an axis of n
// voxels, `stride` voxels apart.
template <typename T, bool kBorder, bool kGrad>
DRDM_INLINE void linear_axis(const T* u, int64_t base, int64_t step, int count, int64_t n,
                             int64_t stride, LinearAxis<T>& a) {
  if (n == 1) return size_one_axis<T, kGrad>(count, a);
  const auto b = static_cast<T>(base), s = static_cast<T>(step);
  const auto ni = static_cast<int32_t>(n), si = static_cast<int32_t>(stride);
  if constexpr (kBorder)
    border_axis<T, kGrad>(u, b, s, count, ni, si, a);
  else
    zeros_axis<T, kGrad>(u, b, s, count, ni, si, a);
}

// The axes of the block starting at voxel p (x0 along the row).
template <typename T, int Dim, bool kBorder, bool kGrad>
DRDM_INLINE void linear_axes(const Geometry& g, const T* field, int64_t z, int64_t y, int64_t x0,
                             int count, LinearAxis<T>* axes) {
  const int64_t hw = g.height * g.width;
  if constexpr (Dim == 3) linear_axis<T, kBorder, kGrad>(field, z, 0, count, g.depth, hw, axes[0]);
  linear_axis<T, kBorder, kGrad>(field + (Dim - 2) * g.plane, y, 0, count, g.height, g.width,
                                 axes[Dim - 2]);
  linear_axis<T, kBorder, kGrad>(field + (Dim - 1) * g.plane, x0, 1, count, g.width, 1,
                                 axes[Dim - 1]);
}

// Nearest neighbour for a block: offset of the nearest voxel (summed over the
// axes) and whether it is inside (1) or not (0). Rounds half to even
// (std::nearbyint), as ATen.
template <typename T>
struct NearestBlock {
  alignas(64) int32_t o[kBlock];
  alignas(64) T m[kBlock];
};

template <typename T, bool kBorder>
DRDM_INLINE void nearest_axis(const T* __restrict u, int64_t base, int64_t step, int count,
                              int64_t n, int64_t stride, NearestBlock<T>& b) {
  if (n == 1) return;  // index 0, inside
  const T bs = static_cast<T>(base), st = static_cast<T>(step);
  const T lo = kBorder ? T(0) : T(-1), hi = kBorder ? static_cast<T>(n - 1) : static_cast<T>(n);
  const auto ni = static_cast<int32_t>(n), si = static_cast<int32_t>(stride);
  for (int j = 0; j < count; ++j) {
    const T c = bs + st * static_cast<T>(j) + u[j];
    T cc = c > lo ? c : lo;
    cc = cc < hi ? cc : hi;
    const auto i = static_cast<int32_t>(std::nearbyint(cc));
    const int32_t inside = static_cast<int32_t>(i >= 0) & static_cast<int32_t>(i < ni);
    b.o[j] += inside * i * si;
    b.m[j] *= static_cast<T>(inside);
  }
}

template <typename T, int Dim, bool kBorder>
DRDM_INLINE void nearest_block(const Geometry& g, const T* field, int64_t z, int64_t y, int64_t x0,
                               int count, NearestBlock<T>& b) {
  for (int j = 0; j < count; ++j) {
    b.o[j] = 0;
    b.m[j] = T(1);
  }
  const int64_t hw = g.height * g.width;
  if constexpr (Dim == 3) nearest_axis<T, kBorder>(field, z, 0, count, g.depth, hw, b);
  nearest_axis<T, kBorder>(field + (Dim - 2) * g.plane, y, 0, count, g.height, g.width, b);
  nearest_axis<T, kBorder>(field + (Dim - 1) * g.plane, x0, 1, count, g.width, 1, b);
}

// ---------------------------------------------------------- forward

// The forward pass reads the two corners along x (adjacent in memory) as one
// pair. Per voxel: the offsets of the 2^(Dim-1) pairs ("rows", corner order
// z, y) and the weights of the pair's two voxels. A pair starts at s = min(o0,
// width - 2), so it never leaves its row; a corner outside the pair has weight
// 0 (needs width >= 2; width 1 takes blend_2d / blend_3d).
template <typename T, int Dim>
struct PairBlock {
  static constexpr int kRows = 1 << (Dim - 1);
  alignas(64) int32_t row[kRows][kBlock];
  alignas(64) T x0[kBlock];
  alignas(64) T x1[kBlock];
};

template <typename T, int Dim>
DRDM_INLINE void pair_block(const LinearAxis<T>* axes, int32_t width, int count,
                            PairBlock<T, Dim>& b) {
  const LinearAxis<T>& x = axes[Dim - 1];
  const LinearAxis<T>& y = axes[Dim - 2];
  for (int j = 0; j < count; ++j) {
    const int32_t s = std::min(x.o0[j], width - 2);
    const auto a0 = static_cast<T>(x.o0[j] == s), a1 = static_cast<T>(x.o0[j] == s + 1);
    const auto b0 = static_cast<T>(x.o1[j] == s), b1 = static_cast<T>(x.o1[j] == s + 1);
    b.x0[j] = a0 * x.w0[j] + b0 * x.w1[j];
    b.x1[j] = a1 * x.w0[j] + b1 * x.w1[j];
    if constexpr (Dim == 3) {
      const LinearAxis<T>& z = axes[0];
      b.row[0][j] = z.o0[j] + y.o0[j] + s;
      b.row[1][j] = z.o0[j] + y.o1[j] + s;
      b.row[2][j] = z.o1[j] + y.o0[j] + s;
      b.row[3][j] = z.o1[j] + y.o1[j] + s;
    } else {
      b.row[0][j] = y.o0[j] + s;
      b.row[1][j] = y.o1[j] + s;
    }
  }
}

// One voxel: the rows' pairs blended along x, then y, then z.
template <typename T, int Dim>
DRDM_INLINE T pair_voxel(const T* s, const PairBlock<T, Dim>& b, const LinearAxis<T>* axes, int j) {
  T v[PairBlock<T, Dim>::kRows];
  for (int r = 0; r < PairBlock<T, Dim>::kRows; ++r)
    v[r] = b.x0[j] * s[b.row[r][j]] + b.x1[j] * s[b.row[r][j] + 1];
  const LinearAxis<T>& y = axes[Dim - 2];
  const T v0 = y.w0[j] * v[0] + y.w1[j] * v[1];
  if constexpr (Dim == 2) return v0;
  const T v1 = y.w0[j] * v[Dim == 3 ? 2 : 0] + y.w1[j] * v[Dim == 3 ? 3 : 1];
  return axes[0].w0[j] * v0 + axes[0].w1[j] * v1;
}

#if defined(__SSE2__)
// Four voxels of a float image: per row, the four pairs in two registers,
// split into first and second voxels of the pairs.
template <int Dim>
DRDM_INLINE void pair_quad(const float* s, float* dst, const float* add,
                           const PairBlock<float, Dim>& b, const LinearAxis<float>* axes, int j) {
  const __m128 x0 = _mm_load_ps(b.x0 + j), x1 = _mm_load_ps(b.x1 + j);
  auto pair = [&](const int32_t* row, int k) DRDM_LAMBDA_INLINE {
    return _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s + row[k])));
  };
  auto row = [&](int r) DRDM_LAMBDA_INLINE {
    const int32_t* o = b.row[r] + j;
    const __m128 lo = _mm_movelh_ps(pair(o, 0), pair(o, 1));  // a0 b0 a1 b1
    const __m128 hi = _mm_movelh_ps(pair(o, 2), pair(o, 3));  // a2 b2 a3 b3
    const __m128 a = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    const __m128 c = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm_add_ps(_mm_mul_ps(a, x0), _mm_mul_ps(c, x1));
  };
  const LinearAxis<float>& y = axes[Dim - 2];
  const __m128 y0 = _mm_load_ps(y.w0 + j), y1 = _mm_load_ps(y.w1 + j);
  __m128 v = _mm_add_ps(_mm_mul_ps(row(0), y0), _mm_mul_ps(row(1), y1));
  if constexpr (Dim == 3) {
    const __m128 v1 = _mm_add_ps(_mm_mul_ps(row(2), y0), _mm_mul_ps(row(3), y1));
    v = _mm_add_ps(_mm_mul_ps(v, _mm_load_ps(axes[0].w0 + j)),
                   _mm_mul_ps(v1, _mm_load_ps(axes[0].w1 + j)));
  }
  if (add) v = _mm_add_ps(_mm_loadu_ps(add), v);
  _mm_storeu_ps(dst, v);
}

template <int Dim>
DRDM_INLINE int pair_blend_simd(const float* src, float* dst, const float* add, int64_t plane,
                                int64_t channels, const PairBlock<float, Dim>& b,
                                const LinearAxis<float>* axes, int count) {
  const int quads = count & ~3;
  for (int64_t c = 0; c < channels; ++c) {
    const float* a = add ? add + c * plane : nullptr;
    for (int j = 0; j < quads; j += 4)
      pair_quad<Dim>(src + c * plane, dst + c * plane + j, a ? a + j : nullptr, b, axes, j);
  }
  return quads;
}
#endif

template <typename T, int Dim>
DRDM_INLINE int pair_blend_simd(const T*, T*, const T*, int64_t, int64_t, const PairBlock<T, Dim>&,
                                const LinearAxis<T>*, int) {
  return 0;
}

// All channels of a block (plus add[c], the field, if given): four voxels at
// a time where SSE2 serves (float), the rest one by one.
template <typename T, int Dim>
DRDM_INLINE void pair_blend(const T* src, T* dst, const T* add, int64_t plane, int64_t channels,
                            const PairBlock<T, Dim>& b, const LinearAxis<T>* axes, int count) {
  const int done = pair_blend_simd(src, dst, add, plane, channels, b, axes, count);
  for (int64_t c = 0; c < channels; ++c) {
    for (int j = done; j < count; ++j) {
      const T v = pair_voxel<T, Dim>(src + c * plane, b, axes, j);
      dst[c * plane + j] = add ? add[c * plane + j] + v : v;
    }
  }
}

// Width 1: corners by separate offsets (vectorised gathers where the compiler can).
template <typename T>
DRDM_INLINE void blend_2d(const T* __restrict src, T* __restrict dst, const LinearAxis<T>& y,
                          const LinearAxis<T>& x, int count) {
  for (int j = 0; j < count; ++j) {
    const int32_t a = y.o0[j], b = y.o1[j];
    const T v0 = x.w0[j] * src[a + x.o0[j]] + x.w1[j] * src[a + x.o1[j]];
    const T v1 = x.w0[j] * src[b + x.o0[j]] + x.w1[j] * src[b + x.o1[j]];
    dst[j] = y.w0[j] * v0 + y.w1[j] * v1;
  }
}

template <typename T>
DRDM_INLINE void blend_3d(const T* __restrict src, T* __restrict dst, const LinearAxis<T>& z,
                          const LinearAxis<T>& y, const LinearAxis<T>& x, int count) {
  for (int j = 0; j < count; ++j) {
    const int32_t a = z.o0[j] + y.o0[j], b = z.o0[j] + y.o1[j];
    const int32_t c = z.o1[j] + y.o0[j], d = z.o1[j] + y.o1[j];
    const T x0 = x.w0[j], x1 = x.w1[j];
    const int32_t p = x.o0[j], q = x.o1[j];
    const T v00 = x0 * src[a + p] + x1 * src[a + q];
    const T v01 = x0 * src[b + p] + x1 * src[b + q];
    const T v10 = x0 * src[c + p] + x1 * src[c + q];
    const T v11 = x0 * src[d + p] + x1 * src[d + q];
    dst[j] = z.w0[j] * (y.w0[j] * v00 + y.w1[j] * v01) + z.w1[j] * (y.w0[j] * v10 + y.w1[j] * v11);
  }
}

template <typename T, int Dim, bool kBorder>
DRDM_INLINE void linear_forward(const Job<T>& job, int64_t begin, int64_t end) {
  const Geometry& g = job.g;
  LinearAxis<T> axes[Dim];
  PairBlock<T, Dim> pairs;
  for_each_block(
      g, begin, end,
      [&](int64_t n, int64_t z, int64_t y, int64_t p, int64_t x0, int count) DRDM_LAMBDA_INLINE {
        const T* field = job.field + g.field_sample(n) * Dim * g.plane + p;
        linear_axes<T, Dim, kBorder, false>(g, field, z, y, x0, count, axes);
        const T* src = job.in + g.in_sample(n) * g.channels * g.plane;
        T* dst = job.out + n * g.channels * g.plane + p;
        const T* add = job.add_field ? field : nullptr;  // channel c of the field, as dst
        if (g.width >= 2) {
          pair_block<T, Dim>(axes, static_cast<int32_t>(g.width), count, pairs);
          pair_blend<T, Dim>(src, dst, add, g.plane, g.channels, pairs, axes, count);
          return;
        }
        for (int64_t c = 0; c < g.channels; ++c) {
          T* d = dst + c * g.plane;
          if constexpr (Dim == 3)
            blend_3d(src + c * g.plane, d, axes[0], axes[1], axes[2], count);
          else
            blend_2d(src + c * g.plane, d, axes[0], axes[1], count);
          if (add)
            for (int j = 0; j < count; ++j) d[j] += add[c * g.plane + j];
        }
      });
}

template <typename T, int Dim, bool kBorder>
DRDM_INLINE void nearest_forward(const Job<T>& job, int64_t begin, int64_t end) {
  const Geometry& g = job.g;
  NearestBlock<T> b;
  for_each_block(
      g, begin, end,
      [&](int64_t n, int64_t z, int64_t y, int64_t p, int64_t x0, int count) DRDM_LAMBDA_INLINE {
        nearest_block<T, Dim, kBorder>(g, job.field + g.field_sample(n) * Dim * g.plane + p, z, y,
                                       x0, count, b);
        const T* src = job.in + g.in_sample(n) * g.channels * g.plane;
        T* dst = job.out + n * g.channels * g.plane + p;
        for (int64_t c = 0; c < g.channels; ++c) {
          const T* s = src + c * g.plane;
          T* o = dst + c * g.plane;
          for (int j = 0; j < count; ++j) {
            const T v = s[b.o[j]];  // the offset is inside even where the voxel is not
            o[j] = b.m[j] != T(0) ? v : T(0);
          }
        }
      });
}

// Calls f(std::integral_constant<int, Dim>, std::bool_constant<border>).
template <typename F>
DRDM_INLINE void dispatch_dim_border(int dims, bool border, F&& f) {
  if (dims == 3) {
    if (border)
      f(std::integral_constant<int, 3>{}, std::true_type{});
    else
      f(std::integral_constant<int, 3>{}, std::false_type{});
  } else {
    if (border)
      f(std::integral_constant<int, 2>{}, std::true_type{});
    else
      f(std::integral_constant<int, 2>{}, std::false_type{});
  }
}

template <typename T>
DRDM_INLINE void forward_rows_impl(const Job<T>& job, int64_t begin, int64_t end) {
  dispatch_dim_border(job.g.dims, job.border, [&](auto dim, auto border) DRDM_LAMBDA_INLINE {
    if (job.linear)
      linear_forward<T, decltype(dim)::value, decltype(border)::value>(job, begin, end);
    else
      nearest_forward<T, decltype(dim)::value, decltype(border)::value>(job, begin, end);
  });
}

DRDM_HOT void forward_rows(const Job<float>& job, int64_t begin, int64_t end) {
  forward_rows_impl(job, begin, end);
}
DRDM_HOT void forward_rows(const Job<double>& job, int64_t begin, int64_t end) {
  forward_rows_impl(job, begin, end);
}

// --------------------------------------------------------- backward

// grad_field accumulators of a block, one per axis: sum over channels of
// grad_out * d out / d coordinate.
template <typename T>
struct FieldGrad {
  alignas(64) T g[3][kBlock];
};

template <typename T>
DRDM_INLINE void field_grad_2d(const T* __restrict src, const T* __restrict go,
                               const LinearAxis<T>& y, const LinearAxis<T>& x, int count,
                               FieldGrad<T>& acc) {
  for (int j = 0; j < count; ++j) {
    const int32_t a = y.o0[j], b = y.o1[j], p = x.o0[j], q = x.o1[j];
    const T v00 = src[a + p], v01 = src[a + q], v10 = src[b + p], v11 = src[b + q];
    const T g = go[j];
    const T ex0 = x.d0[j] * v00 + x.d1[j] * v01, ex1 = x.d0[j] * v10 + x.d1[j] * v11;
    const T lx0 = x.w0[j] * v00 + x.w1[j] * v01, lx1 = x.w0[j] * v10 + x.w1[j] * v11;
    acc.g[1][j] += g * (y.w0[j] * ex0 + y.w1[j] * ex1);
    acc.g[0][j] += g * (y.d0[j] * lx0 + y.d1[j] * lx1);
  }
}

template <typename T>
DRDM_INLINE void field_grad_3d(const T* __restrict src, const T* __restrict go,
                               const LinearAxis<T>& z, const LinearAxis<T>& y,
                               const LinearAxis<T>& x, int count, FieldGrad<T>& acc) {
  for (int j = 0; j < count; ++j) {
    const int32_t a = z.o0[j] + y.o0[j], b = z.o0[j] + y.o1[j];
    const int32_t c = z.o1[j] + y.o0[j], d = z.o1[j] + y.o1[j];
    const int32_t p = x.o0[j], q = x.o1[j];
    const T v000 = src[a + p], v001 = src[a + q], v010 = src[b + p], v011 = src[b + q];
    const T v100 = src[c + p], v101 = src[c + q], v110 = src[d + p], v111 = src[d + q];
    const T dx0 = x.d0[j], dx1 = x.d1[j], wx0 = x.w0[j], wx1 = x.w1[j];
    const T ex00 = dx0 * v000 + dx1 * v001, ex01 = dx0 * v010 + dx1 * v011;
    const T ex10 = dx0 * v100 + dx1 * v101, ex11 = dx0 * v110 + dx1 * v111;
    const T lx00 = wx0 * v000 + wx1 * v001, lx01 = wx0 * v010 + wx1 * v011;
    const T lx10 = wx0 * v100 + wx1 * v101, lx11 = wx0 * v110 + wx1 * v111;
    const T wy0 = y.w0[j], wy1 = y.w1[j], dy0 = y.d0[j], dy1 = y.d1[j], g = go[j];
    acc.g[2][j] += g * (z.w0[j] * (wy0 * ex00 + wy1 * ex01) + z.w1[j] * (wy0 * ex10 + wy1 * ex11));
    acc.g[1][j] += g * (z.w0[j] * (dy0 * lx00 + dy1 * lx01) + z.w1[j] * (dy0 * lx10 + dy1 * lx11));
    acc.g[0][j] += g * (z.d0[j] * (wy0 * lx00 + wy1 * lx01) + z.d1[j] * (wy0 * lx10 + wy1 * lx11));
  }
}

// grad_input: scatter-add of grad_out times the corner weights.
template <typename T>
DRDM_INLINE void scatter_2d(T* dst, const T* __restrict go, const LinearAxis<T>& y,
                            const LinearAxis<T>& x, int count) {
  for (int j = 0; j < count; ++j) {
    const T g0 = go[j] * y.w0[j], g1 = go[j] * y.w1[j];
    const int32_t a = y.o0[j], b = y.o1[j], p = x.o0[j], q = x.o1[j];
    dst[a + p] += g0 * x.w0[j];
    dst[a + q] += g0 * x.w1[j];
    dst[b + p] += g1 * x.w0[j];
    dst[b + q] += g1 * x.w1[j];
  }
}

template <typename T>
DRDM_INLINE void scatter_3d(T* dst, const T* __restrict go, const LinearAxis<T>& z,
                            const LinearAxis<T>& y, const LinearAxis<T>& x, int count) {
  for (int j = 0; j < count; ++j) {
    const T gz0 = go[j] * z.w0[j], gz1 = go[j] * z.w1[j];
    const T g00 = gz0 * y.w0[j], g01 = gz0 * y.w1[j], g10 = gz1 * y.w0[j], g11 = gz1 * y.w1[j];
    const int32_t a = z.o0[j] + y.o0[j], b = z.o0[j] + y.o1[j];
    const int32_t c = z.o1[j] + y.o0[j], d = z.o1[j] + y.o1[j];
    const int32_t p = x.o0[j], q = x.o1[j];
    const T wx0 = x.w0[j], wx1 = x.w1[j];
    dst[a + p] += g00 * wx0;
    dst[a + q] += g00 * wx1;
    dst[b + p] += g01 * wx0;
    dst[b + q] += g01 * wx1;
    dst[c + p] += g10 * wx0;
    dst[c + q] += g10 * wx1;
    dst[d + p] += g11 * wx0;
    dst[d + q] += g11 * wx1;
  }
}

template <typename T, int Dim, bool kBorder, bool kInput, bool kField>
DRDM_INLINE void linear_backward(const Job<T>& job, int64_t begin, int64_t end) {
  const Geometry& g = job.g;
  LinearAxis<T> axes[Dim];
  FieldGrad<T> acc;
  for_each_block(g, begin, end,
                 [&](int64_t n, int64_t z, int64_t y, int64_t p, int64_t x0, int count)
                     DRDM_LAMBDA_INLINE {
                       const T* field = job.field + g.field_sample(n) * Dim * g.plane + p;
                       linear_axes<T, Dim, kBorder, kField>(g, field, z, y, x0, count, axes);
                       if constexpr (kField) std::fill_n(&acc.g[0][0], 3 * kBlock, T(0));
                       const int64_t in_off = g.in_sample(n) * g.channels * g.plane;
                       for (int64_t c = 0; c < g.channels; ++c) {
                         const T* src = job.in + in_off + c * g.plane;
                         const T* go = job.gout + (n * g.channels + c) * g.plane + p;
                         if constexpr (kField && Dim == 3)
                           field_grad_3d(src, go, axes[0], axes[1], axes[2], count, acc);
                         if constexpr (kField && Dim == 2)
                           field_grad_2d(src, go, axes[0], axes[1], count, acc);
                         T* dst = job.gin + in_off + c * g.plane;
                         if constexpr (kInput && Dim == 3)
                           scatter_3d(dst, go, axes[0], axes[1], axes[2], count);
                         if constexpr (kInput && Dim == 2)
                           scatter_2d(dst, go, axes[0], axes[1], count);
                       }
                       if constexpr (kField) {
                         for (int i = 0; i < Dim; ++i)
                           std::copy_n(acc.g[i], count, job.gfield + (n * Dim + i) * g.plane + p);
                       }
                     });
}

template <typename T, int Dim, bool kBorder>
DRDM_INLINE void nearest_backward(const Job<T>& job, int64_t begin, int64_t end) {
  const Geometry& g = job.g;
  NearestBlock<T> b;
  for_each_block(
      g, begin, end,
      [&](int64_t n, int64_t z, int64_t y, int64_t p, int64_t x0, int count) DRDM_LAMBDA_INLINE {
        nearest_block<T, Dim, kBorder>(g, job.field + g.field_sample(n) * Dim * g.plane + p, z, y,
                                       x0, count, b);
        const int64_t in_off = g.in_sample(n) * g.channels * g.plane;
        for (int64_t c = 0; c < g.channels; ++c) {
          T* dst = job.gin + in_off + c * g.plane;
          const T* go = job.gout + (n * g.channels + c) * g.plane + p;
          for (int j = 0; j < count; ++j)
            if (b.m[j] != T(0)) dst[b.o[j]] += go[j];
        }
      });
}

template <typename T, int Dim, bool kBorder>
DRDM_INLINE void linear_backward_flags(const Job<T>& job, int64_t begin, int64_t end) {
  if (job.want_input && job.want_field)
    linear_backward<T, Dim, kBorder, true, true>(job, begin, end);
  else if (job.want_input)
    linear_backward<T, Dim, kBorder, true, false>(job, begin, end);
  else if (job.want_field)
    linear_backward<T, Dim, kBorder, false, true>(job, begin, end);
}

template <typename T>
DRDM_INLINE void backward_rows_impl(const Job<T>& job, int64_t begin, int64_t end) {
  dispatch_dim_border(job.g.dims, job.border, [&](auto dim, auto border) DRDM_LAMBDA_INLINE {
    constexpr int kDim = decltype(dim)::value;
    constexpr bool kBorder = decltype(border)::value;
    if (job.linear)
      linear_backward_flags<T, kDim, kBorder>(job, begin, end);
    else if (job.want_input)
      nearest_backward<T, kDim, kBorder>(job, begin, end);
  });
}

DRDM_HOT void backward_rows(const Job<float>& job, int64_t begin, int64_t end) {
  backward_rows_impl(job, begin, end);
}
DRDM_HOT void backward_rows(const Job<double>& job, int64_t begin, int64_t end) {
  backward_rows_impl(job, begin, end);
}

// ------------------------------------------------------------ drivers

// Rows per task: at least kVoxelsPerTask voxels (times channels) each, so
// that small images stay on one thread and two threads split a 64^3 volume.
int64_t row_grain(const Geometry& g) {
  const int64_t per_row = g.width * std::max<int64_t>(1, g.channels);
  return std::max<int64_t>(1, kVoxelsPerTask / per_row);
}

template <typename T>
Job<T> make_job(const Geometry& g, const at::Tensor& in, const at::Tensor& field,
                Interpolation mode, Padding padding) {
  Job<T> job;
  job.g = g;
  job.linear = mode == Interpolation::kLinear;
  job.border = padding == Padding::kBorder;
  job.in = in.data_ptr<T>();
  job.field = field.data_ptr<T>();
  return job;
}

at::Tensor output_like(const Geometry& g, const at::Tensor& in) {
  std::vector<int64_t> shape(in.sizes().begin(), in.sizes().end());
  shape[0] = g.batch;
  return at::empty(shape, in.options().memory_format(at::MemoryFormat::Contiguous));
}

// Calls f(begin, end) on chunks of rows [0, rows) of at least `grain` rows,
// on ATen's threads, each thread taking the next chunk when done with one:
// a thread slowed by other work on the machine delays the call by at most a
// chunk. (Only for work whose result does not depend on who does which rows.)
template <typename F>
void parallel_rows(int64_t rows, int64_t grain, const F& f) {
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (threads <= 1 || rows <= grain) return f(int64_t{0}, rows);
  const int64_t chunk = std::max(grain, rows / (8 * threads));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t r = next.fetch_add(chunk); r < rows; r = next.fetch_add(chunk))
      f(r, std::min(rows, r + chunk));
  });
}

at::Tensor sample_forward(const at::Tensor& input, const at::Tensor& field, Interpolation mode,
                          Padding padding, bool add_field = false) {
  const auto in = input.contiguous();
  const auto f = field.contiguous();
  const Geometry g = geometry_of(in, f);
  auto out = output_like(g, in);
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "drdm_sample_forward", [&] {
    auto job = make_job<scalar_t>(g, in, f, mode, padding);
    job.out = out.data_ptr<scalar_t>();
    job.add_field = add_field;
    parallel_rows(g.batch * g.rows(), row_grain(g),
                  [&](int64_t begin, int64_t end) { forward_rows(job, begin, end); });
  });
  return out;
}

// Runs the backward with grad_input accumulated into job.gin ([Ni, C, P],
// zeroed). Threads must not add into the same voxels: when every sample has
// its own input (Ni = N) and there are enough samples, tasks are whole
// samples; otherwise each of T tasks gets a slice of the rows and its own
// buffer, and the buffers are summed.
template <typename T>
void backward_with_input(Job<T> job, at::Tensor& grad_input) {
  const Geometry& g = job.g;
  const int64_t rows = g.batch * g.rows();
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (g.in_batch > 1 && g.batch >= threads) {
    at::parallel_for(0, g.batch, 1,
                     [&](int64_t b, int64_t e) { backward_rows(job, b * g.rows(), e * g.rows()); });
    return;
  }
  const int64_t tasks = std::max<int64_t>(1, std::min(threads, rows / row_grain(g)));
  std::vector<at::Tensor> buffers(tasks);
  buffers[0] = grad_input;
  for (int64_t k = 1; k < tasks; ++k) buffers[k] = at::zeros_like(grad_input);
  at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      Job<T> part = job;
      part.gin = buffers[k].data_ptr<T>();
      backward_rows(part, rows * k / tasks, rows * (k + 1) / tasks);
    }
  });
  for (int64_t k = 1; k < tasks; ++k) grad_input.add_(buffers[k]);
}

// Gradients of sample_forward: {grad_input or undefined, grad_field or undefined}.
std::pair<at::Tensor, at::Tensor> sample_backward(const at::Tensor& grad_out,
                                                  const at::Tensor& input, const at::Tensor& field,
                                                  Interpolation mode, Padding padding,
                                                  bool want_input, bool want_field) {
  const auto in = input.contiguous();
  const auto f = field.contiguous();
  const auto gout = grad_out.contiguous();
  const Geometry g = geometry_of(in, f);
  const bool linear = mode == Interpolation::kLinear;
  at::Tensor grad_input, grad_field;
  if (want_input) grad_input = at::zeros(in.sizes(), in.options());
  if (want_field && !linear) grad_field = at::zeros(f.sizes(), f.options());  // as ATen
  if (want_field && linear) {
    std::vector<int64_t> shape(f.sizes().begin(), f.sizes().end());
    shape[0] = g.batch;
    grad_field = at::empty(shape, f.options());
  }
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "drdm_sample_backward", [&] {
    auto job = make_job<scalar_t>(g, in, f, mode, padding);
    job.want_input = want_input;
    job.want_field = want_field && linear;
    job.gout = gout.data_ptr<scalar_t>();
    if (job.want_field) job.gfield = grad_field.data_ptr<scalar_t>();
    if (want_input) {
      job.gin = grad_input.data_ptr<scalar_t>();
      backward_with_input(job, grad_input);
    } else if (job.want_field) {
      parallel_rows(g.batch * g.rows(), row_grain(g),
                    [&](int64_t begin, int64_t end) { backward_rows(job, begin, end); });
    }
  });
  if (want_field && linear && g.field_batch == 1 && g.batch > 1)
    grad_field = grad_field.sum(0, /*keepdim=*/true);
  return {grad_input, grad_field};
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class DirectSample : public torch::autograd::Function<DirectSample> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& field,
                            int64_t mode, int64_t padding) {
    ctx->save_for_backward({input, field});
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["padding"] = padding;
    return sample_forward(input, field, static_cast<Interpolation>(mode),
                          static_cast<Padding>(padding));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto mode = static_cast<Interpolation>(ctx->saved_data["mode"].toInt());
    const auto padding = static_cast<Padding>(ctx->saved_data["padding"].toInt());
    auto [gi, gf] = sample_backward(grads[0], saved[0], saved[1], mode, padding,
                                    ctx->needs_input_grad(0), ctx->needs_input_grad(1));
    return {gi, gf, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool spatial_kernels_enabled() { return kernels_setting().load() != 0; }

bool set_spatial_kernels_enabled(bool enabled) {
  return kernels_setting().exchange(enabled ? 1 : 0) != 0;
}

bool sample_direct_applicable(const at::Tensor& input, const at::Tensor& field) {
  if (!input.defined() || !field.defined()) return false;
  if (!input.device().is_cpu() || !field.device().is_cpu()) return false;
  if (input.layout() != at::kStrided || field.layout() != at::kStrided) return false;
  const auto type = input.scalar_type();
  if ((type != at::kFloat && type != at::kDouble) || field.scalar_type() != type) return false;
  const int64_t dim = field.dim();
  if ((dim != 4 && dim != 5) || input.dim() != dim || field.size(1) != dim - 2) return false;
  if (input.sizes().slice(2) != field.sizes().slice(2)) return false;
  const int64_t ni = input.size(0), nf = field.size(0);
  if (ni != nf && ni != 1 && nf != 1) return false;
  if (input.numel() == 0 || field.numel() == 0) return false;
  int64_t plane = 1;
  for (int64_t i = 2; i < dim; ++i) plane *= field.size(i);
  return plane < std::numeric_limits<int32_t>::max();
}

at::Tensor sample_direct(const at::Tensor& input, const at::Tensor& field, Interpolation mode,
                         Padding padding) {
  TORCH_CHECK(sample_direct_applicable(input, field), "sample_direct: unsupported input ",
              input.sizes(), " ", input.scalar_type(), " ", input.device(), " and field ",
              field.sizes(), " ", field.scalar_type(), " ", field.device());
  const bool grad = at::GradMode::is_enabled() && (input.requires_grad() || field.requires_grad());
  if (!grad) return sample_forward(input, field, mode, padding);
  return DirectSample::apply(input, field, static_cast<int64_t>(mode),
                             static_cast<int64_t>(padding));
}

at::Tensor compose_direct(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(sample_direct_applicable(b, a) && b.size(1) == a.size(1),
              "compose_direct: unsupported fields ", a.sizes(), " ", a.scalar_type(), " ",
              a.device(), " and ", b.sizes(), " ", b.scalar_type(), " ", b.device());
  if (at::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad()))
    return a + sample_direct(b, a, Interpolation::kLinear, Padding::kBorder);
  return sample_forward(b, a, Interpolation::kLinear, Padding::kBorder, /*add_field=*/true);
}

}  // namespace drdm::detail
