// The library's log, routed to an embedding engine's callback.

#include "c_api/c_api_internal.hpp"
#include "diffuse/log.hpp"

namespace {

diffuse_log_level c_level(diffuse::LogLevel level) {
  switch (level) {
    case diffuse::LogLevel::Trace: return DIFFUSE_LOG_TRACE;
    case diffuse::LogLevel::Debug: return DIFFUSE_LOG_DEBUG;
    case diffuse::LogLevel::Info: return DIFFUSE_LOG_INFO;
    case diffuse::LogLevel::Warn: return DIFFUSE_LOG_WARN;
    case diffuse::LogLevel::Error: return DIFFUSE_LOG_ERROR;
  }
  return DIFFUSE_LOG_ERROR;
}

}  // namespace

extern "C" {

diffuse_status diffuse_set_log_callback(diffuse_log_callback callback, void* user_data) {
  return diffuse::c_api::guarded("diffuse_set_log_callback", [&] {
    if (callback == nullptr) {
      diffuse::set_log_callback({});
    } else {
      diffuse::set_log_callback([callback, user_data](diffuse::LogLevel level, std::string_view message) {
        const std::string line(message);  // the C side wants it NUL-terminated
        callback(user_data, c_level(level), line.c_str());
      });
    }
    return DIFFUSE_OK;
  });
}

diffuse_status diffuse_set_log_level(diffuse_log_level level) {
  return diffuse::c_api::guarded("diffuse_set_log_level", [&] {
    static const char* const names[] = {"trace", "debug", "info", "warn", "error", "off"};
    const int value = diffuse::c_api::enum_value(level);
    if (value < DIFFUSE_LOG_TRACE || value > DIFFUSE_LOG_OFF)
      diffuse::c_api::invalid("unknown log level " + std::to_string(value));
    diffuse::set_log_level(names[value]);
    return DIFFUSE_OK;
  });
}

}  // extern "C"
