#pragma once
// Standard base64 (RFC 4648, with padding), as the images travel in JSON answers.

#include <string>
#include <string_view>

namespace diffuse::server {

std::string base64_encode(std::string_view bytes);

}  // namespace diffuse::server
