#pragma once
// Writing a file so that it appears whole or not at all: the bytes go to a temporary file in the same
// folder, which is renamed over the target only after a successful write.

#include <filesystem>
#include <functional>
#include <ostream>

namespace diffuse {

// Calls write(stream) on a temporary file beside `path`, then renames it to `path`. On any failure
// (the callback throws, the disk is full, the folder is not writable) the temporary file is removed
// and diffuse::Error names `path`.
void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::ostream&)>& write);

}  // namespace diffuse
