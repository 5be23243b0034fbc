// A CUDA graph of one recovery step of generation (Alg. 2), behind
// GenerationOptions::cuda_graphs. Private header.
#pragma once

#include <torch/types.h>

#include <functional>
#include <memory>

namespace drdm::detail {

/// One recovery step: next phi from (image, phi, t).
using RecoveryStep =
    std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>;

/// True when libdrdm was built against a CUDA LibTorch (graphs can be captured).
bool cuda_graphs_compiled();

/// The step captured once for fixed shapes on a CUDA device, then replayed:
/// the image, phi and t live in static buffers that each advance() updates in
/// place. The constructor runs the step eagerly on a side stream (warm-up:
/// allocator, cuDNN and grid caches), then captures it; it throws c10::Error
/// when the build has no CUDA, a tensor is not on CUDA, or the step cannot
/// be captured (a host sync inside it).
class RecoveryStepGraph {
 public:
  RecoveryStepGraph(RecoveryStep step, const at::Tensor& image, const at::Tensor& phi, int64_t t);
  ~RecoveryStepGraph();
  RecoveryStepGraph(const RecoveryStepGraph&) = delete;
  RecoveryStepGraph& operator=(const RecoveryStepGraph&) = delete;

  /// phi <- step(image, phi, t) by one replay.
  void advance(int64_t t);
  /// The current phi (a static buffer: clone it to keep it past the next advance).
  const at::Tensor& phi() const;
  /// Sets phi / the image (copied into the static buffers; same shapes).
  void set_phi(const at::Tensor& phi);
  void set_image(const at::Tensor& image);
  /// Number of samples the graph was captured for.
  int64_t batch() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace drdm::detail
