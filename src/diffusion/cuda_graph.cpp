// RecoveryStepGraph (cuda_graph.h): at::cuda::CUDAGraph around one recovery
// step. Compiled with DRDM_WITH_CUDA_GRAPHS when LibTorch is a CUDA build.
#include "diffusion/cuda_graph.h"

#include <c10/util/Exception.h>

#ifdef DRDM_WITH_CUDA_GRAPHS
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace drdm::detail {

#ifdef DRDM_WITH_CUDA_GRAPHS
bool cuda_graphs_compiled() { return true; }

struct RecoveryStepGraph::Impl {
  RecoveryStep step;
  at::Tensor image, phi, t, next;
  at::cuda::CUDAGraph graph;
};

RecoveryStepGraph::RecoveryStepGraph(RecoveryStep step, const at::Tensor& image,
                                     const at::Tensor& phi, int64_t t)
    : impl_(std::make_unique<Impl>()) {
  TORCH_CHECK(image.is_cuda() && phi.is_cuda(), "CUDA graphs need CUDA tensors, got ",
              image.device());
  auto& s = *impl_;
  s.step = std::move(step);
  s.image = image.clone();
  s.phi = phi.clone();
  s.t = at::full({phi.size(0)}, t, phi.options().dtype(at::kLong));
  const c10::cuda::CUDAGuard device(phi.device());
  const auto caller = c10::cuda::getCurrentCUDAStream();
  const auto side = c10::cuda::getStreamFromPool(false, phi.device().index());
  at::cuda::CUDAEvent inputs_ready;
  inputs_ready.record(caller);
  inputs_ready.block(side);  // the side stream waits for the clones above
  {
    const c10::cuda::CUDAStreamGuard on_side(side);
    for (int i = 0; i < 2; ++i) s.next = s.step(s.image, s.phi, s.t);  // warm-up
    s.graph.capture_begin();
    s.next = s.step(s.image, s.phi, s.t);
    s.graph.capture_end();
  }
  at::cuda::CUDAEvent captured;
  captured.record(side);
  captured.block(caller);
}

void RecoveryStepGraph::advance(int64_t t) {
  impl_->t.fill_(t);
  impl_->graph.replay();
  impl_->phi.copy_(impl_->next);
}

#else
bool cuda_graphs_compiled() { return false; }

struct RecoveryStepGraph::Impl {
  at::Tensor image, phi;
};

RecoveryStepGraph::RecoveryStepGraph(RecoveryStep, const at::Tensor&, const at::Tensor&, int64_t) {
  TORCH_CHECK(false, "CUDA graphs: libdrdm was built against a LibTorch without CUDA");
}

void RecoveryStepGraph::advance(int64_t) {}
#endif

RecoveryStepGraph::~RecoveryStepGraph() = default;

const at::Tensor& RecoveryStepGraph::phi() const { return impl_->phi; }

void RecoveryStepGraph::set_phi(const at::Tensor& phi) { impl_->phi.copy_(phi); }

void RecoveryStepGraph::set_image(const at::Tensor& image) { impl_->image.copy_(image); }

int64_t RecoveryStepGraph::batch() const { return impl_->phi.size(0); }

}  // namespace drdm::detail
