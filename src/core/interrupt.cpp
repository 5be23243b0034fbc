#include "drdm/core/interrupt.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <string>

namespace drdm {
namespace {

volatile std::sig_atomic_t g_signal = 0;
std::atomic<SignalCleanup> g_cleanup{nullptr};
static_assert(std::atomic<SignalCleanup>::is_always_lock_free);

void write_stderr(const char* text) noexcept {
  size_t n = 0;
  while (text[n] != '\0') ++n;
  [[maybe_unused]] const auto rc = ::write(STDERR_FILENO, text, n);
}

// Only async-signal-safe calls here: the first signal sets the flag; a
// second one cleans up this process's temporaries and ends it.
extern "C" void on_signal(int signal) {
  if (g_signal == 0) {
    g_signal = signal;
    return;
  }
  write_stderr("interrupted again: stopping now\n");
  if (const SignalCleanup cleanup = g_cleanup.load()) cleanup();
  ::_exit(128 + signal);
}

}  // namespace

Interrupted::Interrupted(int signal)
    : std::runtime_error(std::string("interrupted by ") + signal_name(signal)), signal_(signal) {}

void install_interrupt_handlers() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // system calls in progress continue
  for (int s : {SIGINT, SIGTERM}) ::sigaction(s, &action, nullptr);
}

void set_second_signal_cleanup(SignalCleanup cleanup) noexcept { g_cleanup.store(cleanup); }

int interrupt_signal() noexcept { return g_signal; }

void throw_if_interrupted() {
  if (const int s = g_signal) throw Interrupted(s);
}

const char* signal_name(int signal) noexcept {
  switch (signal) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    default:
      return "a signal";
  }
}

}  // namespace drdm
