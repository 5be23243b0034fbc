#include "drdm/io/models.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "io/files.h"

#ifndef DRDM_SOURCE_DIR
#define DRDM_SOURCE_DIR ""
#endif

namespace drdm {
namespace {

namespace fs = std::filesystem;

/// Folders that may hold shipped models, in the order they are preferred.
std::vector<std::string> model_roots() {
  std::vector<std::string> roots;
  char exe[4096];
  const ssize_t len = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (len > 0) {
    std::string dir(exe, static_cast<size_t>(len));
    dir = dir.substr(0, dir.find_last_of('/'));
    roots.push_back(dir + "/../share/drdm/models");
  }
  if (std::string(DRDM_SOURCE_DIR).size() > 0)
    roots.push_back(std::string(DRDM_SOURCE_DIR) + "/models");
  return roots;
}

/// The first sentence of a model card's first paragraph (what the model is),
/// whole: a period ends it only before a capital letter or a `, and not after an
/// abbreviation ("et al. 2019", "Alg. 2-4").
std::string card_summary(const std::string& folder) {
  std::ifstream in(folder + "/README.md");
  std::string line, paragraph;
  while (std::getline(in, line)) {
    if (line.empty() && !paragraph.empty()) break;
    if (line.empty() || (paragraph.empty() && (line[0] == '#' || line[0] == '*'))) continue;
    paragraph += (paragraph.empty() ? "" : " ") + line;
  }
  for (size_t dot = paragraph.find(". "); dot != std::string::npos;
       dot = paragraph.find(". ", dot + 1)) {
    const auto word_start = paragraph.find_last_of(" (", dot);
    const auto word =
        paragraph.substr(word_start == std::string::npos ? 0 : word_start + 1,
                         dot - (word_start == std::string::npos ? 0 : word_start + 1));
    const bool abbreviation = word == "al" || word == "e.g" || word == "i.e" || word == "cf" ||
                              word == "Alg" || word == "Eq" || word == "Fig" || word == "vs";
    if (!abbreviation && dot + 2 < paragraph.size() &&
        (std::isupper(static_cast<unsigned char>(paragraph[dot + 2])) || paragraph[dot + 2] == '`'))
      return paragraph.substr(0, dot + 1);
  }
  return paragraph;
}

/// `text` in lines of at most `width` characters (words are not split), the
/// lines after the first indented by `indent`.
std::string wrapped(const std::string& text, size_t width, const std::string& indent) {
  std::string out, line, word;
  std::istringstream words(text);
  while (words >> word) {
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      out += (out.empty() ? "" : "\n" + indent) + line;
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
  }
  return out + (out.empty() ? "" : "\n" + indent) + line;
}

}  // namespace

std::vector<ShippedModel> shipped_models() {
  std::vector<ShippedModel> out;
  for (const auto& root : model_roots()) {
    std::error_code ec;
    if (!fs::is_directory(root, ec)) continue;
    for (const auto& entry : fs::directory_iterator(root, ec)) {
      const auto name = entry.path().filename().string();
      const auto model = entry.path().string() + "/model.pt";
      const bool known =
          std::any_of(out.begin(), out.end(), [&](const auto& m) { return m.name == name; });
      if (known || !detail::file_exists(model)) continue;
      const auto task = name.rfind("seg-", 0) == 0   ? "segmentation"
                        : name.rfind("reg-", 0) == 0 ? "registration"
                                                     : "deformation";
      out.push_back({name, model, card_summary(entry.path().string()), task});
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

std::string resolve_model_path(const std::string& name_or_path) {
  if (detail::file_exists(name_or_path)) return name_or_path;
  const auto models = shipped_models();
  for (const auto& m : models)
    if (m.name == name_or_path) return m.path;
  std::string names;
  for (const auto& m : models) names += (names.empty() ? "" : ", ") + m.name;
  throw std::runtime_error("model '" + name_or_path +
                           "' is neither a file nor a shipped model (shipped: " +
                           (names.empty() ? "none found" : names) + ")");
}

std::string default_model_path() {
  if (const char* env = std::getenv("DRDM_MODEL"); env != nullptr && *env != '\0') {
    try {
      return resolve_model_path(env);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(std::string("DRDM_MODEL: ") + e.what());
    }
  }
  return resolve_model_path(kDefaultModelName);
}

std::string shipped_models_help(const std::string& task) {
  std::string text;
  for (const auto& m : shipped_models()) {
    if (m.task != task) continue;
    std::string pad(m.name.size() < 16 ? 16 - m.name.size() : 1, ' ');
    text += "  " + m.name + pad + wrapped(m.description, 56, std::string(18, ' ')) + "\n";
  }
  return text.empty() ? "  (no shipped models found)\n" : text;
}

}  // namespace drdm
