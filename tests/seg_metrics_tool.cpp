// Test-only tool: drdm::seg::label_metrics of two label files, as JSON.
// usage: seg_metrics_tool PRED TRUTH [CLASS ...]   (classes default to 1 2 3)
// Prints {"spacing": [...tensor order], "classes": [{"label": c, "dice": ...}, ...]};
// undefined values (NaN) are written as null.
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "drdm/io/image_io.h"
#include "drdm/seg/metrics.h"

namespace {

void print_number(const char* key, double value, bool last = false) {
  if (std::isnan(value))
    std::printf("\"%s\": null%s", key, last ? "" : ", ");
  else
    std::printf("\"%s\": %.17g%s", key, value, last ? "" : ", ");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s PRED TRUTH [CLASS ...]\n", argv[0]);
    return 2;
  }
  try {
    const auto pred = drdm::read_labels(argv[1]);
    const auto truth = drdm::read_labels(argv[2]);
    // Geometry spacing is in ITK order (x, y, z); the metrics take tensor order.
    const std::vector<double> spacing(truth.geometry.spacing.rbegin(),
                                      truth.geometry.spacing.rend());
    std::vector<int64_t> classes;
    for (int i = 3; i < argc; ++i) classes.push_back(std::stoll(argv[i]));
    if (classes.empty()) classes = {1, 2, 3};
    const auto metrics = drdm::seg::label_metrics(pred.data, truth.data, spacing, classes);
    std::printf("{\"spacing\": [");
    for (size_t i = 0; i < spacing.size(); ++i) std::printf("%s%.17g", i ? ", " : "", spacing[i]);
    std::printf("], \"classes\": [");
    for (size_t i = 0; i < metrics.size(); ++i) {
      const auto& m = metrics[i];
      std::printf("%s{\"label\": %lld, \"truth_voxels\": %lld, \"pred_voxels\": %lld, ",
                  i ? ", " : "", static_cast<long long>(classes[i]),
                  static_cast<long long>(m.truth_voxels), static_cast<long long>(m.pred_voxels));
      print_number("dice", m.dice);
      print_number("sensitivity", m.sensitivity);
      print_number("precision", m.precision);
      print_number("asd", m.asd);
      print_number("hd95", m.hd95, true);
      std::printf("}");
    }
    std::printf("]}\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seg_metrics_tool: %s\n", e.what());
    return 1;
  }
  return 0;
}
