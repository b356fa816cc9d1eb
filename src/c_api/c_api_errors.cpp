// Statuses, the thread-local last error, and the version: the parts of the C API every call shares.

#include <c10/util/Exception.h>

#include <new>

#include "c_api/c_api_internal.hpp"
#include "diffuse/error.hpp"
#include "diffuse/errors.hpp"

namespace diffuse::c_api {
namespace {

thread_local std::string last_error;

// libtorch's messages can run on for pages (every dispatch key); the first paragraph says what failed.
std::string first_paragraph(const char* message) {
  std::string text(message);
  const size_t end = text.find("\n\n");
  return end == std::string::npos ? text : text.substr(0, end);
}

}  // namespace

diffuse_status record_error(diffuse_status status, const char* function, const char* message) noexcept {
  try {
    last_error = std::string(function) + ": " + message;
  } catch (...) {
    last_error.clear();  // out of memory for the message itself; the status still says what happened
  }
  return status;
}

void clear_error() noexcept { last_error.clear(); }

diffuse_status map_current_exception(const char* function) noexcept {
  try {
    throw;
  } catch (const CallError& e) {
    return record_error(e.status, function, e.what());
  } catch (const diffuse::InvalidArgumentError& e) {
    return record_error(DIFFUSE_ERROR_INVALID_ARGUMENT, function, e.what());
  } catch (const diffuse::NotFoundError& e) {
    return record_error(DIFFUSE_ERROR_NOT_FOUND, function, e.what());
  } catch (const diffuse::CorruptInputError& e) {
    return record_error(DIFFUSE_ERROR_CORRUPT_INPUT, function, e.what());
  } catch (const diffuse::OutOfMemoryError& e) {
    return record_error(DIFFUSE_ERROR_OUT_OF_MEMORY, function, e.what());
  } catch (const diffuse::DistributedError& e) {
    return record_error(DIFFUSE_ERROR_DISTRIBUTED, function, e.what());
  } catch (const diffuse::Error& e) {
    return record_error(DIFFUSE_ERROR_FAILED, function, e.what());
  } catch (const c10::OutOfMemoryError& e) {
    return record_error(DIFFUSE_ERROR_OUT_OF_MEMORY, function, first_paragraph(e.what_without_backtrace()).c_str());
  } catch (const c10::Error& e) {
    return record_error(DIFFUSE_ERROR_TORCH, function, first_paragraph(e.what_without_backtrace()).c_str());
  } catch (const std::bad_alloc& e) {
    return record_error(DIFFUSE_ERROR_OUT_OF_MEMORY, function, "out of memory");
  } catch (const std::exception& e) {
    return record_error(DIFFUSE_ERROR_INTERNAL, function, e.what());
  } catch (...) {
    return record_error(DIFFUSE_ERROR_INTERNAL, function, "an exception that is not a std::exception");
  }
}

}  // namespace diffuse::c_api

extern "C" {

const char* diffuse_version(void) { return DIFFUSE_VERSION_STRING; }

void diffuse_version_numbers(int* major, int* minor, int* patch) {
  if (major != nullptr) *major = DIFFUSE_VERSION_MAJOR;
  if (minor != nullptr) *minor = DIFFUSE_VERSION_MINOR;
  if (patch != nullptr) *patch = DIFFUSE_VERSION_PATCH;
}

const char* diffuse_last_error(void) { return diffuse::c_api::last_error.c_str(); }

const char* diffuse_status_name(diffuse_status status) {
  switch (status) {
    case DIFFUSE_OK: return "DIFFUSE_OK";
    case DIFFUSE_ERROR_INVALID_ARGUMENT: return "DIFFUSE_ERROR_INVALID_ARGUMENT";
    case DIFFUSE_ERROR_BUFFER_TOO_SMALL: return "DIFFUSE_ERROR_BUFFER_TOO_SMALL";
    case DIFFUSE_ERROR_NOT_FOUND: return "DIFFUSE_ERROR_NOT_FOUND";
    case DIFFUSE_ERROR_FAILED: return "DIFFUSE_ERROR_FAILED";
    case DIFFUSE_ERROR_OUT_OF_MEMORY: return "DIFFUSE_ERROR_OUT_OF_MEMORY";
    case DIFFUSE_ERROR_TORCH: return "DIFFUSE_ERROR_TORCH";
    case DIFFUSE_ERROR_INTERNAL: return "DIFFUSE_ERROR_INTERNAL";
    case DIFFUSE_ERROR_CORRUPT_INPUT: return "DIFFUSE_ERROR_CORRUPT_INPUT";
    case DIFFUSE_ERROR_DISTRIBUTED: return "DIFFUSE_ERROR_DISTRIBUTED";
    case DIFFUSE_ERROR_CANCELLED: return "DIFFUSE_ERROR_CANCELLED";
  }
  return "DIFFUSE_ERROR_UNKNOWN";
}

}  // extern "C"
