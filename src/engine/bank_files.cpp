#include "engine/bank_files.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "drdm/core/log.h"
#include "drdm/engine/distributed.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/text_file.h"
#include "io/files.h"

namespace drdm::detail {

bool bank_published(const std::string& dir, const nlohmann::json& identity,
                    const std::string& what) {
  const auto bank = join(dir, "bank.pt"), manifest = join(dir, "manifest.json");
  if (!file_exists(bank)) return false;
  nlohmann::json m;
  if (file_exists(manifest)) {
    std::ifstream in(manifest);
    m = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  }
  if (m.is_object() && m.value("identity", nlohmann::json()) == identity) return true;
  log::info(what + ": '" + bank + "' " +
            (file_exists(manifest)
                 ? std::string("was made for other settings")
                 : std::string("has no manifest.json (a run stopped between the two writes)")) +
            "; rebuilding");
  return false;
}

void publish_bank(const std::string& dir, const nlohmann::json& record,
                  const std::function<void(const std::string&)>& save) {
  if (!dist::world().writer()) return;  // a data-parallel job: rank 0 alone writes
  const auto manifest = join(dir, "manifest.json");
  if (::unlink(manifest.c_str()) != 0 && errno != ENOENT)
    throw std::runtime_error("cannot remove the old '" + manifest + "': " + std::strerror(errno));
  save(join(dir, "bank.pt"));
  write_text_atomically(manifest, record.dump(2) + "\n");
}

}  // namespace drdm::detail
