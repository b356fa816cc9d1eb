#pragma once
// An 8-bit RGB image, what the pipeline returns, and PNG writing.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <vector>

namespace diffuse {

struct Image {
  int64_t width = 0;
  int64_t height = 0;
  std::vector<uint8_t> pixels;  // RGB, row-major, 3 * width * height bytes

  // Writes a PNG; the file appears whole or not at all. Throws diffuse::Error naming the path.
  void save_png(const std::filesystem::path& path) const;
  // Reads an 8-bit RGB or RGBA PNG (alpha dropped).
  static Image load_png(const std::filesystem::path& path);

  // [3, H, W] float in [0, 1] -> pixels, rounding as diffusers' numpy_to_pil does (x * 255, round).
  static Image from_tensor(const at::Tensor& chw);
  // [3, H, W] float32 in [0, 1].
  at::Tensor to_tensor() const;
};

// [B, 3, H, W] in [0, 1] -> B images.
std::vector<Image> images_from_tensor(const at::Tensor& bchw);

}  // namespace diffuse
