#include "diffuse/models/qwenimage_rope.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "diffuse/error.hpp"

namespace diffuse {
namespace {

// Rows of diffusers' pos_freqs (positions 0 .. 4095) and of neg_freqs (-4096 .. -1).
constexpr int64_t kTablePositions = 4096;

[[noreturn]] void fail(const std::string& what) { throw Error("QwenEmbedRope: " + what); }

// e^(i * position * theta^(-2k/dim)) for k < dim / 2: [positions, dim / 2] complex64 on the CPU.
at::Tensor axis_phasor(const at::Tensor& positions, int64_t dim, double theta) {
  const at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat).div(static_cast<double>(dim));
  const at::Tensor inv_freq = at::pow(theta, exponents).reciprocal();
  const at::Tensor angles = at::outer(positions.to(at::kFloat), inv_freq);
  return at::polar(at::ones_like(angles), angles);
}

// Positions first .. first + count - 1.
at::Tensor positions_from(int64_t first, int64_t count) { return at::arange(first, first + count, at::kLong); }

RotaryEmbedding from_phasor(const at::Tensor& phasor, c10::Device device) {
  const at::Tensor on_device = phasor.contiguous().to(device);
  return {at::real(on_device).repeat_interleave(2, /*dim=*/1), at::imag(on_device).repeat_interleave(2, /*dim=*/1),
          on_device};
}

}  // namespace

QwenImageRotaryEmbedding qwenimage_rotary_embedding(const std::vector<QwenImageShape>& shapes, int64_t text_len,
                                                    const std::vector<int64_t>& axes_dim, c10::Device device,
                                                    double theta) {
  if (axes_dim.size() != 3) fail("axes_dim must have 3 entries, got " + std::to_string(axes_dim.size()));
  for (int64_t d : axes_dim)
    if (d <= 0 || d % 2 != 0) fail("axes_dim entries must be even and positive, got " + std::to_string(d));
  if (shapes.empty()) fail("no image shape given");
  if (text_len < 0) fail("negative text length " + std::to_string(text_len));

  std::vector<at::Tensor> images;
  int64_t max_index = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const auto [frames, height, width] = shapes[i];
    const auto index = static_cast<int64_t>(i);
    const std::string which = "image " + std::to_string(i) + " (" + std::to_string(frames) + ", " +
                              std::to_string(height) + ", " + std::to_string(width) + ")";
    if (frames <= 0 || height <= 0 || width <= 0) fail(which + " has a size that is not positive");
    if (index + frames > kTablePositions || height - height / 2 > kTablePositions || height / 2 > kTablePositions ||
        width - width / 2 > kTablePositions || width / 2 > kTablePositions)
      fail(which + " reaches past diffusers' " + std::to_string(kTablePositions) + " rotary positions");
    // Rows and columns centred: -(h - h/2) .. h/2 - 1.
    const at::Tensor f = axis_phasor(positions_from(index, frames), axes_dim[0], theta);
    const at::Tensor h = axis_phasor(positions_from(-(height - height / 2), height), axes_dim[1], theta);
    const at::Tensor w = axis_phasor(positions_from(-(width - width / 2), width), axes_dim[2], theta);
    const int64_t df = f.size(1), dh = h.size(1), dw = w.size(1);
    images.push_back(at::cat({f.view({frames, 1, 1, df}).expand({frames, height, width, df}),
                              h.view({1, height, 1, dh}).expand({frames, height, width, dh}),
                              w.view({1, 1, width, dw}).expand({frames, height, width, dw})},
                             /*dim=*/-1)
                         .reshape({frames * height * width, df + dh + dw}));
    max_index = std::max({max_index, height / 2, width / 2});
  }
  if (max_index + text_len > kTablePositions)
    fail(std::to_string(text_len) + " text tokens from position " + std::to_string(max_index) + " reach past diffusers' " +
         std::to_string(kTablePositions) + " rotary positions");
  const at::Tensor text_positions = positions_from(max_index, text_len);
  std::vector<at::Tensor> text_axes;
  for (int64_t d : axes_dim) text_axes.push_back(axis_phasor(text_positions, d, theta));
  return {from_phasor(at::cat(images, 0), device), from_phasor(at::cat(text_axes, -1), device)};
}

RotaryEmbedding joint_rotary_embedding(const QwenImageRotaryEmbedding& rotary) {
  return {at::cat({rotary.text.cos, rotary.image.cos}, 0), at::cat({rotary.text.sin, rotary.image.sin}, 0),
          at::cat({rotary.text.phasor, rotary.image.phasor}, 0)};
}

}  // namespace diffuse
