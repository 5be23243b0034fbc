/// @file CLI11 checks the programs share beyond CLI11's own (CLI::Range,
/// CLI::NonNegativeNumber, ...): a bad value is an error naming the option.
#pragma once

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>

namespace drdm::app {

/// An empty value ("") would silently mean the default: refused.
inline CLI::Validator non_empty() {
  return CLI::Validator(
      [](std::string& s) { return s.empty() ? std::string("must not be empty") : std::string(); },
      "", "NONEMPTY");
}

/// An integer >= 0 that fits 64 bits (CLI11 would wrap -1 to 2^64 - 1, and
/// CLI::NonNegativeNumber prints a garbled value when it refuses one).
inline CLI::Validator non_negative_integer() {
  return CLI::Validator(
      [](std::string& s) {
        bool ok =
            !s.empty() && s.size() <= 20 && s.find_first_not_of("0123456789") == std::string::npos;
        if (ok) {
          errno = 0;
          std::strtoull(s.c_str(), nullptr, 10);
          ok = errno != ERANGE;
        }
        return ok ? std::string() : "Value " + s + " is not an integer >= 0 (below 2^64)";
      },
      "UINT", "NONNEGATIVE");
}

/// A finite number in [lo, hi] (CLI::Range lets NaN through).
inline CLI::Validator finite_in(double lo, double hi) {
  const auto text = [](double v) {
    std::ostringstream out;
    out << v;
    return out.str();
  };
  return CLI::Validator(
      [lo, hi, text](std::string& s) {
        double v = 0;
        if (!CLI::detail::lexical_cast(s, v) || !std::isfinite(v) || v < lo || v > hi)
          return "Value " + s + " is not a finite number in [" + text(lo) + ", " + text(hi) + "]";
        return std::string();
      },
      "FLOAT in [" + text(lo) + " - " + text(hi) + "]", "FINITE");
}

/// Parses the command line as CLI11_PARSE would, with the exit codes that
/// docs/reliability.md promises: --help prints and gives 0; every usage error
/// (unknown option or argument, missing or invalid value, no subcommand)
/// prints CLI11's message and gives 2 (CLI11's own codes are 105-109). The
/// programs' own options (-q, -v, ...) are also taken after a subcommand.
/// Returns the exit code when the program must stop here.
inline std::optional<int> parse_command_line(CLI::App& cli, int argc, char** argv) {
  for (auto* sub : cli.get_subcommands([](CLI::App*) { return true; })) sub->fallthrough();
  try {
    cli.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::ParseError& e) {
    const int code = cli.exit(e);  // prints the help or the error
    return code == static_cast<int>(CLI::ExitCodes::Success) ? 0 : 2;
  }
}

}  // namespace drdm::app
