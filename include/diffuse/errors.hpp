#pragma once
// The kinds of diffuse::Error that a caller may want to tell apart (the C API maps each to its own
// status; C++ callers catch them by type). Each is a diffuse::Error, so `catch (const Error&)` still
// catches them all, and the message still names what is at fault. A failure of no particular kind is a
// plain diffuse::Error.
//
//   try {
//     auto pipe = load_pipeline(folder);
//   } catch (const NotFoundError& e) {       // the folder, a component or a file is not there
//   } catch (const CorruptInputError& e) {   // a safetensors file or a config is malformed or truncated
//   }
//
// This header is separate from error.hpp so that adding a kind recompiles only the files that throw it.

#include <string>

#include "diffuse/error.hpp"

namespace diffuse {

// A value the caller passed is out of range or of the wrong shape.
class InvalidArgumentError : public Error {
 public:
  using Error::Error;
};

// A file, folder or component that should be there is not (a checkpoint or config missing on disk).
class NotFoundError : public Error {
 public:
  using Error::Error;
};

// A file is there but cannot be read as what it should be: a truncated or malformed safetensors
// checkpoint, a config that is not JSON or has a value of the wrong type.
class CorruptInputError : public Error {
 public:
  using Error::Error;
};

// A request that cannot fit in the memory of the device that would run it, refused before any work.
class OutOfMemoryError : public Error {
 public:
  using Error::Error;
};

// A multi-process run lost a member: a rank died, left or stopped answering, or the rendezvous store
// is gone.
class DistributedError : public Error {
 public:
  using Error::Error;
};

}  // namespace diffuse
