#include "log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <string>

#include "diffuse/error.hpp"
#include "diffuse/log.hpp"

namespace diffuse {
namespace {

spdlog::level::level_enum parse_level(std::string_view text) {
  const std::string name(text);
  if (name == "trace") return spdlog::level::trace;
  if (name == "debug") return spdlog::level::debug;
  if (name == "info") return spdlog::level::info;
  if (name == "warn" || name == "warning") return spdlog::level::warn;
  if (name == "error") return spdlog::level::err;
  if (name == "off") return spdlog::level::off;
  throw Error("unknown log level '" + name + "' (expected trace, debug, info, warn, error or off)");
}

std::shared_ptr<spdlog::logger> make_logger() {
  auto logger = spdlog::stderr_color_mt("diffuse");
  logger->set_pattern("[diffuse %L] %v");
  spdlog::level::level_enum level = spdlog::level::info;
  if (const char* env = std::getenv("DIFFUSE_LOG_LEVEL"); env != nullptr && *env != '\0') {
    try {
      level = parse_level(env);
    } catch (const Error& e) {
      logger->warn("DIFFUSE_LOG_LEVEL: {}; using info", e.what());
    }
  }
  logger->set_level(level);
  return logger;
}

}  // namespace

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> instance = make_logger();
  return *instance;
}

void set_log_level(std::string_view level) { logger().set_level(parse_level(level)); }

}  // namespace diffuse
