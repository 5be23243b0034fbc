// libdrdm parse-only stand-in (see README.md).
// ProcessGroupGloo::GlooStore derives from gloo::rendezvous::Store and marks four
// functions `override`, so the base must declare them virtual. GLOO_STORE_HAS_STORE_V2
// is left undefined so the header declares no more than these. The constructor is
// declared and never defined: constructing a GlooStore (whose vtable would follow
// this declaration, not Gloo's) outside libtorch is a link error.
#pragma once
#include <chrono>
#include <string>
#include <vector>
namespace gloo {
namespace rendezvous {
class Store {
 public:
  virtual ~Store();
  virtual void set(const std::string& key, const std::vector<char>& value) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(
      const std::vector<std::string>& keys,
      const std::chrono::milliseconds& timeout) = 0;

 protected:
  Store(); // never defined: see above
};
} // namespace rendezvous
} // namespace gloo
