#pragma once
// diffuse logs through spdlog (kept out of the public headers). The level comes from the
// DIFFUSE_LOG_LEVEL environment variable (trace, debug, info, warn, error, off; default info) and
// can be changed at run time.

#include <string_view>

namespace diffuse {

// Throws diffuse::Error for an unknown level name.
void set_log_level(std::string_view level);

}  // namespace diffuse
