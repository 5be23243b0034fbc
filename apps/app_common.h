/// @file Shared start-up for the command-line programs.
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <iostream>
#include <new>

#include "drdm/core/interrupt.h"
#include "drdm/core/log.h"
#include "drdm/core/runtime.h"

namespace drdm::app {

// Logs go to stderr so that stdout carries only results (e.g. JSON); freed
// tensor memory is kept for reuse (see drdm/core/runtime.h). SIGINT and SIGTERM
// stop the run at its next check, without leaving temporaries (see
// drdm/core/interrupt.h).
inline void init_program(bool verbose) {
  install_interrupt_handlers();
  keep_freed_memory_for_reuse();
  log::use_stderr();
  log::set_level(verbose ? log::Level::kInfo : log::Level::kWarn);
}

// Runs the program's work: any exception becomes "<program>: error: <what>"
// on stderr and exit status 1; after SIGINT/SIGTERM, whatever the exception
// (a wrapper may have rethrown it), "<program>: interrupted by SIGINT" and
// exit status 128 + signal.
template <typename Fn>
int run_reporting_errors(const char* program, Fn&& work) {
  const auto interrupted = [program] {
    std::cerr << program << ": interrupted by " << signal_name(interrupt_signal()) << "\n";
    return 128 + interrupt_signal();
  };
  try {
    work();
    return interrupt_signal() ? interrupted() : 0;
  } catch (const c10::Error& e) {  // LibTorch's messages without the C++ backtrace
    if (interrupt_signal()) return interrupted();
    std::cerr << program << ": error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {  // an allocation that no caller named (they say "while ...")
    if (interrupt_signal()) return interrupted();
    std::cerr << program << ": error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    if (interrupt_signal()) return interrupted();
    std::cerr << program << ": error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace drdm::app
