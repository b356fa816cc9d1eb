#pragma once
// The error a request gets: an HTTP status and a JSON body naming what is wrong.
//
//   throw ApiError(400, "steps", "'steps' must be an integer from 1 to 150, got 0");
//   -> 400 {"error": {"message": "...", "field": "steps", "status": 400}}

#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>

namespace diffuse::server {

class ApiError : public std::runtime_error {
 public:
  // `field`: the request field at fault ("" when the request as a whole is: a malformed body, a full queue).
  ApiError(int status, std::string field, const std::string& message)
      : std::runtime_error(message), status_(status), field_(std::move(field)) {}

  int status() const { return status_; }
  const std::string& field() const { return field_; }

  nlohmann::json body() const {
    nlohmann::json error = {{"message", what()}, {"status", status_}};
    error["field"] = field_.empty() ? nlohmann::json(nullptr) : nlohmann::json(field_);
    return {{"error", error}};
  }

 private:
  int status_;
  std::string field_;
};

}  // namespace diffuse::server
