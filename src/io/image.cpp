#include "diffuse/io/image.hpp"
#include "diffuse/io/png.hpp"

#include <ATen/ATen.h>
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <memory>
#include <sstream>

#include "diffuse/error.hpp"
#include "io/atomic_file.hpp"

namespace diffuse {
namespace {

void write_to_stream(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::ostream*>(png_get_io_ptr(png));
  out->write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(length));
}
void flush_stream(png_structp png) { static_cast<std::ostream*>(png_get_io_ptr(png))->flush(); }

}  // namespace

std::string encode_png(const Image& image) {
  const int64_t width = image.width, height = image.height;
  if (width <= 0 || height <= 0 || image.pixels.size() != static_cast<size_t>(3 * width * height))
    throw Error("cannot encode an image of " + std::to_string(width) + "x" + std::to_string(height) + " with " +
                std::to_string(image.pixels.size()) + " bytes as PNG");
  std::ostringstream out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (info == nullptr) {
    png_destroy_write_struct(&png, nullptr);
    throw Error("cannot start a PNG writer");
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw Error("PNG encoding failed");
  }
  png_set_write_fn(png, &out, write_to_stream, flush_stream);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int64_t row = 0; row < height; ++row)
    png_write_row(png, const_cast<png_bytep>(image.pixels.data() + row * width * 3));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return std::move(out).str();
}

void Image::save_png(const std::filesystem::path& path) const {
  if (width <= 0 || height <= 0 || pixels.size() != static_cast<size_t>(3 * width * height))
    throw Error(path.string() + ": cannot save an image of " + std::to_string(width) + "x" +
                std::to_string(height) + " with " + std::to_string(pixels.size()) + " bytes");
  // The same bytes as encode_png, which diffuse-server sends: one encoder for both.
  const std::string bytes = encode_png(*this);
  write_file_atomically(path, [&](std::ostream& out) { out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())); });
}

Image Image::load_png(const std::filesystem::path& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file) throw Error(path.string() + ": cannot open");
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (info == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    throw Error(path.string() + ": cannot start a PNG reader");
  }
  Image image;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw Error(path.string() + ": not a readable PNG");
  }
  png_init_io(png, file.get());
  png_read_info(png, info);
  // Normalize every PNG flavour to 8-bit RGB.
  png_set_expand(png);
  png_set_strip_16(png);
  png_set_strip_alpha(png);
  png_set_gray_to_rgb(png);
  png_read_update_info(png, info);
  image.width = png_get_image_width(png, info);
  image.height = png_get_image_height(png, info);
  image.pixels.resize(static_cast<size_t>(image.width * image.height * 3));
  for (int64_t row = 0; row < image.height; ++row)
    png_read_row(png, image.pixels.data() + row * image.width * 3, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return image;
}

Image Image::from_tensor(const at::Tensor& chw) {
  if (chw.dim() != 3 || chw.size(0) != 3)
    throw Error("Image::from_tensor: expected [3, H, W], got " + c10::str(chw.sizes()));
  at::Tensor hwc = (chw.detach().to(at::kCPU, at::kFloat).clamp(0, 1) * 255).round().to(at::kByte)
                       .permute({1, 2, 0}).contiguous();
  Image image;
  image.height = chw.size(1);
  image.width = chw.size(2);
  image.pixels.assign(hwc.data_ptr<uint8_t>(), hwc.data_ptr<uint8_t>() + hwc.numel());
  return image;
}

at::Tensor Image::to_tensor() const {
  at::Tensor hwc = at::from_blob(const_cast<uint8_t*>(pixels.data()), {height, width, 3}, at::kByte);
  return hwc.permute({2, 0, 1}).to(at::kFloat).div(255.0).contiguous();
}

std::vector<Image> images_from_tensor(const at::Tensor& bchw) {
  if (bchw.dim() != 4) throw Error("images_from_tensor: expected [B, 3, H, W], got " + c10::str(bchw.sizes()));
  std::vector<Image> images;
  for (int64_t i = 0; i < bchw.size(0); ++i) images.push_back(Image::from_tensor(bchw[i]));
  return images;
}

}  // namespace diffuse
