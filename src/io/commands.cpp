#include "drdm/io/commands.h"

#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "core/soft_labels.h"
#include "drdm/core/log.h"
#include "drdm/io/image_io.h"
#include "drdm/io/preview.h"
#include "drdm/io/text_file.h"
#include "io/atomic_file.h"
#include "io/files.h"
#include "io/grid_check.h"

namespace drdm {
namespace detail {
namespace {

PixelType parse_pixel_type(const std::string& name) {
  for (auto t : {PixelType::kUInt8, PixelType::kInt8, PixelType::kUInt16, PixelType::kInt16,
                 PixelType::kUInt32, PixelType::kInt32, PixelType::kUInt64, PixelType::kInt64,
                 PixelType::kFloat32, PixelType::kFloat64})
    if (to_string(t) == name) return t;
  throw std::invalid_argument("unknown pixel type '" + name +
                              "' (expected auto, uint8, int8, uint16, int16, uint32, int32, "
                              "uint64, int64, float32 or float64)");
}

}  // namespace
}  // namespace detail

void warp_file(const WarpFileOptions& o) {
  detail::require_writable_output(o.output, "-o");
  detail::require_writable_output(o.preview, "--preview");
  detail::require_distinct(o.output, {o.input, o.field});
  detail::require_distinct(o.preview, {o.input, o.field, o.output});
  const auto field = read_field(o.field);
  const auto info = read_image_info(o.input);
  detail::check_field_grid(info.geometry, field.geometry, o.input, o.field);
  log::info(
      c10::str("warping '", o.input, "' (", to_string(info.pixel_type), ") with '", o.field, "'"));
  // A 2D field on a single-slice volume warps the slice in 2D; the output
  // keeps the volume's grid.
  const int64_t slice = field.geometry.dimension() < info.geometry.dimension()
                            ? info.geometry.single_slice_axis()
                            : -1;
  const auto to_field_grid = [slice](const at::Tensor& x) {
    return slice < 0 ? x : x.squeeze(2 + slice);
  };
  const auto to_input_grid = [slice](const at::Tensor& x) {
    return slice < 0 ? x : x.unsqueeze(2 + slice);
  };
  if (o.labels) {
    if (!o.preview.empty())
      throw std::invalid_argument("--preview draws images; it is not available with --labels");
    const auto labels = read_labels(o.input);
    if (o.label_interpolation == LabelInterpolation::kSoft)
      detail::check_soft_labels(labels.data, "'" + o.input + "'");
    auto out =
        to_input_grid(warp_labels(to_field_grid(labels.data), field.data, o.label_interpolation));
    if (o.pixel_type == "auto")
      write_labels(o.output, out, labels.geometry);
    else
      write_image(o.output, out, labels.geometry, detail::parse_pixel_type(o.pixel_type));
  } else {
    const auto image = read_image(o.input);
    const auto input = to_field_grid(image.data);
    auto out = warp(input, field.data, o.interpolation, o.padding);
    PixelType type = PixelType::kFloat32;
    if (o.pixel_type != "auto") {
      type = detail::parse_pixel_type(o.pixel_type);
    } else if (detail::has_extension(o.output, ".png")) {
      if (image.pixel_type != PixelType::kUInt8 && image.pixel_type != PixelType::kUInt16)
        throw std::runtime_error("'" + o.output +
                                 "': PNG holds only uint8/uint16 pixels and the input is " +
                                 to_string(image.pixel_type) +
                                 "; choose --pixel-type uint8 or uint16 to round and clamp");
      type = image.pixel_type;
    }
    write_image(o.output, to_input_grid(out), image.geometry, type);
    if (!o.preview.empty()) write_warp_preview(o.preview, input, out, field.data);
  }
  log::info(c10::str("wrote '", o.output, "'"));
}

namespace detail {
namespace {
std::string stats_json(const std::string& path, const Image& field) {
  const auto s = field_stats(field.data);
  nlohmann::json j;
  j["field"] = path;
  j["size"] = field.geometry.tensor_size();
  j["spacing_mm"] =
      std::vector<double>(field.geometry.spacing.rbegin(), field.geometry.spacing.rend());
  j["axis_order"] = field.geometry.dimension() == 3 ? "D,H,W" : "H,W";
  j["max_magnitude_pct"] = s.max_magnitude_pct.at(0);
  j["mean_magnitude_pct"] = s.mean_magnitude_pct.at(0);
  j["folding_ratio"] = s.folding_ratio.at(0);
  j["min_jacobian"] = s.min_jacobian.at(0);
  j["max_jacobian"] = s.max_jacobian.at(0);
  return j.dump(2) + "\n";
}
}  // namespace
}  // namespace detail

std::string field_stats_file(const FieldStatsFileOptions& o) {
  detail::require_writable_output(o.jacobian_map, "--jacobian-map");
  detail::require_writable_output(o.json_output, "--json");
  detail::require_distinct(o.jacobian_map, {o.field});
  detail::require_distinct(o.json_output, {o.field, o.jacobian_map});
  const auto field = read_field(o.field);
  const auto text = detail::stats_json(o.field, field);
  if (!o.jacobian_map.empty())
    write_image(o.jacobian_map, jacobian_determinant(field.data), field.geometry,
                PixelType::kFloat32);
  if (!o.json_output.empty()) write_text_atomically(o.json_output, text);
  return text;
}

void check_output_file(const std::string& output, const std::vector<std::string>& inputs,
                       const std::string& option) {
  detail::require_writable_output(output, option);
  detail::require_distinct(output, inputs);
}

std::string random_field_file(const RandomFieldFileOptions& o) {
  detail::require_writable_output(o.output, "-o");
  detail::require_distinct(o.output, {o.reference});
  const auto info = read_image_info(o.reference);
  Image field;
  field.geometry =
      info.geometry.squeeze_single_slice();  // a single-slice reference gets a 2D field
  field.data = random_smooth_field(field.geometry.tensor_size(), 1, o.seed, o.field);
  write_field(o.output, field.data, field.geometry);
  log::info(c10::str("wrote random field '", o.output, "' on the grid of '", o.reference, "'"));
  return detail::stats_json(o.output, field);
}

}  // namespace drdm
