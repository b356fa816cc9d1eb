#include "cli/cli.hpp"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <sstream>

namespace diffuse::cli {
namespace {

// --help: the usage line, what the program does, then every option as "--name TYPE  meaning (default
// X)", grouped as the program added them, and the footer (the environment variables, where any).
class HelpFormatter : public CLI::Formatter {
 public:
  explicit HelpFormatter(std::string usage) : usage_(std::move(usage)) { label("Positionals", "Arguments"); }

  std::string make_help(const CLI::App* app, std::string, CLI::AppFormatMode mode) const override {
    std::string out = "usage: " + usage_ + "\n\n" + app->get_description() + "\n";
    const std::string positionals = make_positionals(app);
    if (!positionals.empty()) out += "\n" + positionals;
    out += "\n" + make_groups(app, mode);
    const std::string footer = make_footer(app);
    if (!footer.empty()) out += "\n" + footer;
    return out;
  }

  // "Model:" and its options; make_groups puts one empty line between groups.
  std::string make_group(std::string group, bool is_positional,
                         std::vector<const CLI::Option*> options) const override {
    std::string out = group + ":\n";
    for (const CLI::Option* option : options) out += make_option(option, is_positional);
    return out;
  }

  std::string make_option_name(const CLI::Option* option, bool is_positional) const override {
    std::string name = CLI::Formatter::make_option_name(option, is_positional);
    for (size_t comma = name.find(','); comma != std::string::npos; comma = name.find(',', comma + 2))
      name.replace(comma, 1, ", ");
    return name;
  }

  // CLI11 writes "--steps INT=28 REQUIRED"; the default and "required" go after the meaning instead.
  std::string make_option_opts(const CLI::Option* option) const override {
    if (option->get_positional() || option->get_type_size() == 0) return "";
    return " " + option->get_type_name();
  }

  std::string make_option_desc(const CLI::Option* option) const override {
    std::string text = option->get_description();
    std::string note;
    if (option->get_required()) note = "(required)";
    else if (!option->get_default_str().empty()) note = "(default " + option->get_default_str() + ")";
    if (note.empty()) return text;
    // On a line of its own where it would take the line past 100 columns.
    const size_t last_line = text.size() - (text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
    return text + (last_line + 1 + note.size() > 100 - get_column_width() ? "\n" : " ") + note;
  }

 private:
  std::string usage_;
};

// "an integer", "an integer of at least 1", "a number from 0 to 1", "a non-negative number"; an
// empty bound is no bound.
std::string describe(const std::string& kind, const std::string& min, const std::string& max) {
  if (!min.empty() && !max.empty()) return kind + " from " + min + " to " + max;
  if (min == "0") return "a non-negative " + kind.substr(kind.find(' ') + 1);
  if (!min.empty()) return kind + " of at least " + min;
  if (!max.empty()) return kind + " of at most " + max;
  return kind;
}

std::string to_text(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

std::string describe(const IntRange& range) {
  return describe("an integer", range.min == IntRange{}.min ? "" : std::to_string(range.min),
                  range.max == IntRange{}.max ? "" : std::to_string(range.max));
}

std::string describe(const FloatRange& range) {
  return describe("a number", std::isinf(range.min) ? "" : to_text(range.min),
                  std::isinf(range.max) ? "" : to_text(range.max));
}

// from_chars: decimal only, no spaces, no "+", no "0x"; `value` is set only when all of `text` is one number.
template <typename T>
bool read_whole(const std::string& text, T& value) {
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  return !text.empty() && error == std::errc() && stop == end;
}

int64_t parse_int(const std::string& name, const std::string& text, IntRange range) {
  int64_t value = 0;
  if (!read_whole(text, value) || value < range.min || value > range.max)
    throw invalid_value(name + " expects " + describe(range) + ", got '" + text + "'");
  return value;
}

uint64_t parse_uint64(const std::string& name, const std::string& text) {
  uint64_t value = 0;
  if (!read_whole(text, value)) throw invalid_value(name + " expects a non-negative integer, got '" + text + "'");
  return value;
}

double parse_float(const std::string& name, const std::string& text, FloatRange range) {
  double value = 0;
  if (!read_whole(text, value) || !std::isfinite(value) || value < range.min || value > range.max)
    throw invalid_value(name + " expects " + describe(range) + ", got '" + text + "'");
  return value;
}

// "a, b or c"
std::string one_of(const std::vector<std::string>& choices) {
  std::string out;
  for (size_t i = 0; i < choices.size(); ++i)
    out += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
  return out;
}

// The name that messages use: the first of "--nproc-per-node,--nproc_per_node".
std::string first_name(const std::string& names) { return names.substr(0, names.find(',')); }

// A single-valued option whose callback stores the (last) value it was given.
CLI::Option* add_single(CLI::App& app, const std::string& names, const std::string& help,
                        std::function<void(const std::string&)> store) {
  CLI::Option* option = app.add_option(
      names,
      [store = std::move(store)](const CLI::results_t& results) {
        store(results.back());
        return true;
      },
      help);
  return option->expected(1);
}

}  // namespace

CLI::ValidationError invalid_value(const std::string& message) { return CLI::ValidationError(message); }

void init(CLI::App& app, const std::string& usage) {
  app.formatter(std::make_shared<HelpFormatter>(usage));
  app.get_formatter()->column_width(30);
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

[[noreturn]] void usage_error(const CLI::App& app, const std::string& message) {
  std::cerr << app.get_name() << ": " << message << " (see --help)\n";
  std::exit(kUsageError);
}

void parse(CLI::App& app, int argc, char** argv) {
  app.set_help_flag("-h,--help", "print this help and exit");  // again, so that it is listed last
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    std::exit(0);
  } catch (const CLI::RequiredError& e) {
    // CLI11 says "--model is required"; with the type it also says what to give: "--model DIR".
    for (const CLI::Option* option : app.get_options()) {
      if (!option->get_required() || option->count() > 0) continue;
      const std::string type = option->get_positional() ? "" : " " + option->get_type_name();
      usage_error(app, option->get_name(option->get_positional()) + type + " is required");
    }
    usage_error(app, e.what());
  } catch (const CLI::ExtrasError& e) {
    const std::vector<std::string> extras = app.remaining();
    if (extras.empty()) usage_error(app, e.what());
    const std::string& first = extras.front();
    usage_error(app,
                (first.size() > 1 && first[0] == '-' ? "unknown option '" : "unexpected argument '") + first + "'");
  } catch (const CLI::ArgumentMismatch& e) {
    // CLI11 says "--steps: 1 required N missing" when the command line ends after an option.
    const std::string message = e.what();
    const size_t colon = message.find(": ");
    if (colon != std::string::npos && message.size() > 8 && message.compare(message.size() - 8, 8, " missing") == 0)
      usage_error(app, message.substr(0, colon) + " needs a value");
    usage_error(app, message);
  } catch (const CLI::ParseError& e) {
    usage_error(app, e.what());
  }
}

CLI::Option* add_int(CLI::App& app, const std::string& name, int64_t& value, const std::string& help, IntRange range) {
  return add_single(app, name, help,
                    [&value, name = first_name(name), range](const std::string& text) {
                      value = parse_int(name, text, range);
                    })
      ->type_name("N")
      ->default_str(std::to_string(value));
}

CLI::Option* add_int(CLI::App& app, const std::string& name, std::optional<int64_t>& value, const std::string& help,
                     IntRange range) {
  return add_single(app, name, help,
                    [&value, name = first_name(name), range](const std::string& text) {
                      value = parse_int(name, text, range);
                    })
      ->type_name("N")
      ->default_str(value ? std::to_string(*value) : "");
}

CLI::Option* add_uint64(CLI::App& app, const std::string& name, uint64_t& value, const std::string& help) {
  return add_single(app, name, help,
                    [&value, name = first_name(name)](const std::string& text) { value = parse_uint64(name, text); })
      ->type_name("N")
      ->default_str(std::to_string(value));
}

CLI::Option* add_uint64(CLI::App& app, const std::string& name, std::optional<uint64_t>& value,
                        const std::string& help) {
  return add_single(app, name, help,
                    [&value, name = first_name(name)](const std::string& text) { value = parse_uint64(name, text); })
      ->type_name("N")
      ->default_str(value ? std::to_string(*value) : "");
}

CLI::Option* add_float(CLI::App& app, const std::string& name, double& value, const std::string& help,
                       FloatRange range) {
  return add_single(app, name, help,
                    [&value, name = first_name(name), range](const std::string& text) {
                      value = parse_float(name, text, range);
                    })
      ->type_name("X")
      ->default_str(to_text(value));
}

CLI::Option* add_float(CLI::App& app, const std::string& name, std::optional<double>& value, const std::string& help,
                       FloatRange range) {
  return add_single(app, name, help,
                    [&value, name = first_name(name), range](const std::string& text) {
                      value = parse_float(name, text, range);
                    })
      ->type_name("X")
      ->default_str(value ? to_text(*value) : "");
}

CLI::Option* add_choice(CLI::App& app, const std::string& name, std::string& value,
                        const std::vector<std::string>& choices, const std::string& help) {
  std::string type;
  for (const std::string& choice : choices) type += (type.empty() ? "" : "|") + choice;
  return add_text(app, name, value, type, help, [name = first_name(name), choices](const std::string& text) {
    for (const std::string& choice : choices)
      if (text == choice) return;
    throw invalid_value(name + " expects " + one_of(choices) + ", got '" + text + "'");
  });
}

CLI::Option* add_text(CLI::App& app, const std::string& name, std::string& value, const std::string& type,
                      const std::string& help) {
  return add_text(app, name, value, type, help, [](const std::string&) {});
}

CLI::Option* add_text(CLI::App& app, const std::string& name, std::string& value, const std::string& type,
                      const std::string& help, const std::function<void(const std::string& text)>& check) {
  return add_single(app, name, help,
                    [&value, check](const std::string& text) {
                      check(text);
                      value = text;
                    })
      ->type_name(type)
      ->default_str(value);
}

CLI::Option* add_text_list(CLI::App& app, const std::string& name, std::vector<std::string>& values,
                           const std::string& type, const std::string& help) {
  std::string shown;
  for (const std::string& value : values) shown += (shown.empty() ? "\"" : ", \"") + value + "\"";
  CLI::Option* option = app.add_option(
      name,
      [&values](const CLI::results_t& results) {
        values = results;
        return true;
      },
      help);
  return option->type_name(type)->expected(1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->default_str(shown);
}

CLI::Option* add_flag(CLI::App& app, const std::string& name, bool& value, const std::string& help) {
  return app.add_flag(name, value, help);
}

}  // namespace diffuse::cli
