#pragma once
// diffuse reports every failure a user can act on with one exception type, whose message names
// the file, tensor, key, component or rank at fault.

#include <stdexcept>
#include <string>

namespace diffuse {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace diffuse
