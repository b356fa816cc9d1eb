#pragma once
// diffuse logs through spdlog (kept out of the public headers). The level comes from the
// DIFFUSE_LOG_LEVEL environment variable (trace, debug, info, warn, error, off; default info) and
// can be changed at run time. Messages go to stderr unless a callback takes them (an engine that
// embeds diffuse routes them into its own log).

#include <functional>
#include <string_view>

namespace diffuse {

// Throws diffuse::Error for an unknown level name.
void set_log_level(std::string_view level);

enum class LogLevel { Trace, Debug, Info, Warn, Error };
// One message, without the "[diffuse X]" prefix or a newline; valid during the call only.
using LogCallback = std::function<void(LogLevel level, std::string_view message)>;

// Sends every message to `callback` instead of stderr; an empty callback restores stderr. Calls to
// the callback never overlap; it runs on the thread that logs and must not log through diffuse or
// call set_log_callback (either would deadlock).
void set_log_callback(LogCallback callback);

}  // namespace diffuse
