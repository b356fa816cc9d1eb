#include "log.hpp"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <mutex>
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

LogLevel log_level(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace: return LogLevel::Trace;
    case spdlog::level::debug: return LogLevel::Debug;
    case spdlog::level::info: return LogLevel::Info;
    case spdlog::level::warn: return LogLevel::Warn;
    default: return LogLevel::Error;
  }
}

// The logger's only sink: stderr, or the callback when one is set. Switching inside one sink (rather
// than swapping the logger's sinks) keeps logging from other threads race-free; base_sink's mutex
// serializes the callback's calls.
class SwitchSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  void set_callback(LogCallback callback) {
    std::lock_guard<std::mutex> lock(mutex_);
    callback_ = std::move(callback);
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& message) override {
    if (callback_)
      callback_(log_level(message.level), std::string_view(message.payload.data(), message.payload.size()));
    else
      stderr_->log(message);
  }
  void flush_() override { stderr_->flush(); }
  void set_pattern_(const std::string& pattern) override { stderr_->set_pattern(pattern); }
  void set_formatter_(std::unique_ptr<spdlog::formatter> formatter) override {
    stderr_->set_formatter(std::move(formatter));
  }

 private:
  std::shared_ptr<spdlog::sinks::stderr_color_sink_st> stderr_ =
      std::make_shared<spdlog::sinks::stderr_color_sink_st>();
  LogCallback callback_;
};

const std::shared_ptr<SwitchSink>& switch_sink() {
  static const std::shared_ptr<SwitchSink> sink = std::make_shared<SwitchSink>();
  return sink;
}

std::shared_ptr<spdlog::logger> make_logger() {
  auto logger = std::make_shared<spdlog::logger>("diffuse", switch_sink());
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

void set_log_callback(LogCallback callback) {
  logger();  // the sink gets its pattern with the logger
  switch_sink()->set_callback(std::move(callback));
}

}  // namespace diffuse
