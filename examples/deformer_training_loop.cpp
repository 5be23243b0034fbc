// Augmenting inside your own training loop with drdm::Deformer.
//
//   deformer_training_loop [MODEL.pt] [cpu|cuda]
//
// Each step takes a batch of images and label maps (here: synthetic
// phantoms, [N, 1, H, W] at their own size), deforms both with fields that
// the trained DRDM generates (paper Alg. 3), and would hand them to your
// segmentation network. Images and labels stay on the device they came on;
// labels never gain a class. Built and run by the package-consumer test
// against an installed libdrdm.
#include <ATen/ATen.h>
#include <drdm/diffusion/deform_job.h>  // default_model_path
#include <drdm/diffusion/generate.h>

#include <iostream>
#include <string>

namespace {

// Two nested ellipses: image intensities and the matching class map {0, 1, 2}.
void phantom_batch(int64_t n, int64_t h, int64_t w, at::Tensor& images, at::Tensor& labels) {
  const auto y = at::linspace(-1, 1, h).view({h, 1});
  const auto x = at::linspace(-1, 1, w).view({1, w});
  images = at::zeros({n, 1, h, w});
  labels = at::zeros({n, 1, h, w}, at::kLong);
  for (int64_t i = 0; i < n; ++i) {
    const double s = 0.5 + 0.1 * static_cast<double>(i);
    const auto outer = (x * x / (s * s) + y * y / 0.5) < 1;
    const auto inner = (x * x / (0.25 * s * s) + y * y / 0.12) < 1;
    labels[i][0] = outer.to(at::kLong) + inner.to(at::kLong);
    images[i][0] = 200.0 * outer.to(at::kFloat) + 300.0 * inner.to(at::kFloat) + 20.0;
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string model = argc > 1 ? argv[1] : drdm::default_model_path();
    const torch::Device device(argc > 2 ? argv[2] : "cpu");
    drdm::DeformerOptions options;
    options.generation.batch = 8;  // samples per network pass
    const drdm::Deformer deformer(model, device, options);
    std::cout << "model " << model << ": " << deformer.dims() << "D, grid "
              << deformer.model_size()[0] << "x" << deformer.model_size()[1]
              << ", T = " << deformer.timesteps() << "\n";

    at::Tensor images, labels;
    phantom_batch(4, 72, 88, images,
                  labels);  // any size: fields are made on the model grid and resampled back
    images = images.to(device), labels = labels.to(device);
    for (int64_t step = 0; step < 2; ++step) {
      // One level per sample (or one for all); a seed per step keeps runs reproducible.
      const auto out =
          deformer.deform(images, labels, {30, 45, 30, 45}, /*seed=*/static_cast<uint64_t>(step));
      const auto stats = drdm::field_stats(out.fields);
      // ... train your network on out.images / out.labels here ...
      const bool same_classes =
          at::isin(std::get<0>(at::_unique(out.labels)), std::get<0>(at::_unique(labels)))
              .all()
              .item<bool>();
      std::cout << "step " << step << ": images " << out.images.sizes() << " labels "
                << out.labels.sizes() << " on " << out.images.device()
                << ", max |u| = " << stats.max_magnitude_pct[0] << "% of the image, folding "
                << stats.folding_ratio[0] << ", no new classes: " << same_classes << "\n";
      if (!same_classes || out.images.sizes() != images.sizes()) return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "deformer_training_loop: " << e.what() << "\n";
    return 1;
  }
}
