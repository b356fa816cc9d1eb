#pragma once
// PNG encoding in memory: the bytes Image::save_png writes, for programs that send images elsewhere
// than a file (diffuse-server's base64 answers). One encoder, so that a server's PNG and the generate
// program's file are the same bytes for the same image.
//
//   const std::string png = diffuse::encode_png(out.images[0]);

#include <string>

#include "diffuse/io/image.hpp"

namespace diffuse {

// The image as an 8-bit RGB PNG file's bytes. Throws diffuse::Error when the image is empty or its
// pixels do not match its size.
std::string encode_png(const Image& image);

}  // namespace diffuse
