/// @file SIGINT / SIGTERM: a run stops cleanly at the next check, without
/// leaving temporary files behind.
#pragma once

#include <stdexcept>

namespace drdm {

/// Thrown by throw_if_interrupted() once SIGINT or SIGTERM arrived.
class Interrupted : public std::runtime_error {
 public:
  explicit Interrupted(int signal);
  int signal() const noexcept { return signal_; }

 private:
  int signal_;
};

/// Installs the SIGINT and SIGTERM handlers (every program does, at start).
/// The first signal only sets a flag: training steps, per-file loops and
/// every atomic write check it (throw_if_interrupted), so the run stops at
/// the next check, removes its temporaries and exits with 128 + signal. A
/// second signal removes the temporary folders of writes in progress and
/// exits at once.
void install_interrupt_handlers();

/// What a second signal runs before the process ends: one async-signal-safe
/// function (the atomic writers register the removal of their temporaries).
using SignalCleanup = void (*)() noexcept;
void set_second_signal_cleanup(SignalCleanup cleanup) noexcept;

/// The signal received (SIGINT or SIGTERM), or 0.
int interrupt_signal() noexcept;

/// Throws Interrupted when a signal arrived.
void throw_if_interrupted();

/// "SIGINT", "SIGTERM" or "a signal".
const char* signal_name(int signal) noexcept;

}  // namespace drdm
