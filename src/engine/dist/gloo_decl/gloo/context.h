// libdrdm parse-only stand-in (see README.md).
// ProcessGroupGloo::setTimeout() (inline) calls gloo::Context::setTimeout, a
// non-virtual member that libtorch_cpu exports with exactly this signature. The
// class can be neither created nor destroyed here, and has no data members, so
// nothing here depends on the real object's layout.
#pragma once
#include <chrono>
// c10d_gloo.cpp checks this so that no other gloo/ tree (e.g. libgloo-dev in
// /usr/include) can stand in for these declarations unnoticed.
#define DRDM_GLOO_DECL 1
namespace gloo {
class Context {
 public:
  Context() = delete;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  void setTimeout(std::chrono::milliseconds timeout);

 private:
  ~Context();
};
} // namespace gloo
