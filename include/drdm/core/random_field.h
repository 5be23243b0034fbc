/// @file Smooth random diffeomorphic displacement fields (multi-scale velocity + scaling and
/// squaring).
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace drdm {

/// Options of random_smooth_field.
struct RandomFieldOptions {
  double amplitude = 4.0;  ///< largest velocity magnitude in voxels (~ largest displacement)
  int64_t control = 5;     ///< control points per axis on the coarsest level (>= 2)
  int64_t levels = 3;      ///< finer levels double the control points and halve the amplitude
  int64_t squarings = 7;   ///< scaling-and-squaring steps; 0 returns the velocity itself
};

/// A batch [batch, d, ...size] of smooth random displacement fields in
/// voxels: Gaussian velocities on nested control grids, linearly upsampled,
/// summed, component i scaled by (size_i - 1) / (longest - 1) so that every
/// axis moves by the same fraction of its length (size-1 axes not at all),
/// scaled so the largest velocity is `amplitude` voxels, then integrated by
/// scaling and squaring so that x -> x + u(x) is (numerically) invertible. The same seed gives
/// the same fields on every device (noise is drawn on the CPU).
torch::Tensor random_smooth_field(at::IntArrayRef size, int64_t batch, uint64_t seed,
                                  const RandomFieldOptions& options = {},
                                  const torch::TensorOptions& tensor_options = {});

}  // namespace drdm
