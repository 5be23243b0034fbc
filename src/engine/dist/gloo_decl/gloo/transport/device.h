// libdrdm parse-only stand-in (see README.md). Devices and unbound buffers are
// only ever held through std::shared_ptr / std::unique_ptr, so they stay
// incomplete types: any attempt to use one is a compile error.
#pragma once
namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
} // namespace gloo
