#pragma once
// The library's logger: spdlog, named "diffuse", writing to stderr. Internal header.

#include <spdlog/spdlog.h>

namespace diffuse {

spdlog::logger& logger();

}  // namespace diffuse

#define DIFFUSE_LOG_DEBUG(...) ::diffuse::logger().debug(__VA_ARGS__)
#define DIFFUSE_LOG_INFO(...) ::diffuse::logger().info(__VA_ARGS__)
#define DIFFUSE_LOG_WARN(...) ::diffuse::logger().warn(__VA_ARGS__)
#define DIFFUSE_LOG_ERROR(...) ::diffuse::logger().error(__VA_ARGS__)
