#include "io/input_checks.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <cstdio>
#include <stdexcept>

namespace drdm::detail {
namespace {

/// The length of the UTF-8 sequence at text[i], or 0 when it is not valid
/// (overlong forms, surrogates and code points beyond U+10FFFF included).
size_t utf8_length(const std::string& text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  unsigned min = 0, code = 0;
  if ((c & 0xE0) == 0xC0)
    n = 2, min = 0x80, code = c & 0x1F;
  else if ((c & 0xF0) == 0xE0)
    n = 3, min = 0x800, code = c & 0x0F;
  else if ((c & 0xF8) == 0xF0)
    n = 4, min = 0x10000, code = c & 0x07;
  else
    return 0;
  if (i + n > text.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    code = (code << 6) | (byte(i + k) & 0x3F);
  }
  if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
  return n;
}

}  // namespace

std::string escaped(const std::string& text) {
  std::string out;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out += ch;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

void require_utf8(const std::string& text, const std::string& what) {
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_length(text, i);
    if (n == 0)
      throw std::invalid_argument(what + " is not valid UTF-8 (byte " + std::to_string(i) +
                                  "): the JSON records of the run need UTF-8 names; rename it");
    i += n;
  }
}

void require_label_range(const at::Tensor& labels, int64_t max_label, const std::string& path,
                         const std::string& rule) {
  if (labels.numel() == 0) return;
  const auto outside = at::logical_or(labels<0, labels> max_label);
  if (!outside.any().item<bool>()) return;
  const auto value = labels.masked_select(outside)[0].item<int64_t>();
  throw std::runtime_error("label map '" + path + "' holds the label " + std::to_string(value) +
                           ", outside 0.." + std::to_string(max_label) + " (" + rule + ")");
}

void require_not_dangling(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return;
  if (::stat(path.c_str(), &st) != 0)
    throw std::runtime_error("'" + path + "' is a symbolic link to a file that does not exist");
}

}  // namespace drdm::detail
