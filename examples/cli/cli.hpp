#pragma once
// The command-line layer that every bundled program shares: CLI11 (Debian's libcli11-dev) with
// diffuse's conventions, and options that check their values as they are read.
//
//   CLI::App app("What the program does, in a paragraph.", "generate");
//   cli::init(app, "generate --model DIR --prompt TEXT [options]");
//   cli::add_int(app, "--steps", steps, "denoising steps", {.min = 1});
//   cli::add_choice(app, "--output-type", output_type, {"image", "latent"}, "what to produce");
//   cli::parse(app, argc, argv);
//
// The conventions:
// - `--help` (or -h) prints the usage line, what the program does and every option with what it means
//   and its default (the value the variable holds when the option is added), then exits 0.
// - A usage error (an unknown option, a missing value, a malformed number, a number out of range, an
//   unknown choice, a missing required option) is one line on stderr, "PROGRAM: what is wrong (see
//   --help)", and exit code 2. Errors met while working are the program's own (exit code 1).
// - Numbers are strict: the whole text is one decimal number ("3x", "0x10", " 3" and "" are refused),
//   in the option's range. Floating-point numbers are finite.
// - An option given twice keeps its last value, except the repeatable ones (add_text_list), which keep
//   every value in order.
//
// Option groups that several programs share (the model, the generation options) are in options.hpp.

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace diffuse::cli {

// The exit code of a usage error, as getopt-style programs have it.
inline constexpr int kUsageError = 2;

// Sets the conventions on `app`: the usage line printed first by --help (without "usage: "), the
// help layout, and "the last value wins" for options given twice.
void init(CLI::App& app, const std::string& usage);

// Parses the command line. Returns when the options are good; prints the help and exits 0 for --help;
// prints one line and exits 2 for a usage error.
void parse(CLI::App& app, int argc, char** argv);

// A usage error found after parse (a check across options, an unreadable list file): one line on
// stderr, "PROGRAM: MESSAGE (see --help)", then exit 2.
[[noreturn]] void usage_error(const CLI::App& app, const std::string& message);

// The ranges that numbers are checked against; unbounded by default.
struct IntRange {
  int64_t min = std::numeric_limits<int64_t>::min();
  int64_t max = std::numeric_limits<int64_t>::max();
};
struct FloatRange {
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
};

// Each add_* takes the option's name as CLI11 does, aliases after a comma ("--master-port,--master_port";
// messages use the first), and returns the option, for ->required(), ->group(...) or ->type_name(...).
//
// Options that take a number. The type name in --help is N (integers) or X (other numbers); change it
// with ->type_name("SECONDS"). The default shown is the variable's value now; an unset optional shows
// none, so its help text says what happens without it.
CLI::Option* add_int(CLI::App& app, const std::string& name, int64_t& value, const std::string& help,
                     IntRange range = {});
CLI::Option* add_int(CLI::App& app, const std::string& name, std::optional<int64_t>& value, const std::string& help,
                     IntRange range = {});
CLI::Option* add_uint64(CLI::App& app, const std::string& name, uint64_t& value, const std::string& help);
CLI::Option* add_uint64(CLI::App& app, const std::string& name, std::optional<uint64_t>& value,
                        const std::string& help);
CLI::Option* add_float(CLI::App& app, const std::string& name, double& value, const std::string& help,
                       FloatRange range = {});
CLI::Option* add_float(CLI::App& app, const std::string& name, std::optional<double>& value, const std::string& help,
                       FloatRange range = {});

// An option whose value is one of `choices`; --help shows them as its type ("image|latent").
CLI::Option* add_choice(CLI::App& app, const std::string& name, std::string& value,
                        const std::vector<std::string>& choices, const std::string& help);

// Options that take text: a path, a prompt. `type` names it in --help (FILE, DIR, TEXT). The default
// shown is the value now, unless it is empty.
CLI::Option* add_text(CLI::App& app, const std::string& name, std::string& value, const std::string& type,
                      const std::string& help);
// The same with a check of its own, run on the text before it is stored: `check` throws
// invalid_value("--NAME expects ..., got '...'") when the text is wrong.
CLI::Option* add_text(CLI::App& app, const std::string& name, std::string& value, const std::string& type,
                      const std::string& help, const std::function<void(const std::string& text)>& check);
// Repeatable: every occurrence adds one value (--prompt a --prompt b). Values given replace the ones
// the list holds now, which are the default.
CLI::Option* add_text_list(CLI::App& app, const std::string& name, std::vector<std::string>& values,
                           const std::string& type, const std::string& help);

// A flag: present means true.
CLI::Option* add_flag(CLI::App& app, const std::string& name, bool& value, const std::string& help);

// The error an option's own check throws from a callback: the message is the whole line (it names the
// option), e.g. "--steps expects an integer of at least 1, got '0'".
CLI::ValidationError invalid_value(const std::string& message);

}  // namespace diffuse::cli
