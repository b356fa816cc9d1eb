#pragma once
// Qwen-Image's rotary position embedding, diffusers' QwenEmbedRope with scale_rope=True (the only form
// QwenImageTransformer2DModel builds). Each head's channels split over three axes (frame, height,
// width; axes_dims_rope). Image tokens take their frame index and their row and column measured from
// the image's centre: an image of height h has rows -(h - h/2) .. h/2 - 1, so the rotation is the same
// for the middle of any image size. Text tokens come after every image position: token j has position
// max(h/2, w/2 over the images) + j on all three axes, whatever the text mask says.
//
// The angles are diffusers' to the bit: float32 position * float32 theta^(-2i/dim), turned into
// e^(i angle) by torch.polar on the CPU (diffusers builds its 4096-row tables so, then moves them).

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <vector>

#include "diffuse/models/embeddings.hpp"

namespace diffuse {

// One image of a batch item, in tokens of the packed latent (latent height / 2 by width / 2 for a
// patch of 2): diffusers' img_shapes entry (frames, height, width).
struct QwenImageShape {
  int64_t frames = 1;
  int64_t height = 0;
  int64_t width = 0;

  int64_t tokens() const { return frames * height * width; }
  bool operator==(const QwenImageShape& other) const {
    return frames == other.frames && height == other.height && width == other.width;
  }
};

// Rows for the image tokens (the images of `shapes` one after the other, each frame by row by column;
// image i's frames start at frame index i) and for `text_len` text tokens, each a RotaryEmbedding with
// cos/sin [rows, head_dim] and the complex phasor [rows, head_dim / 2], on `device`.
struct QwenImageRotaryEmbedding {
  RotaryEmbedding image;
  RotaryEmbedding text;
};

// diffusers' table has 4096 positions each way: a position past it (an image of more than 8192 tokens
// a side, more than 4096 frames, or text reaching past 4096) throws diffuse::Error, as diffusers fails
// there too; so do a shape with a zero or negative size and axes_dim that is not three even sizes.
QwenImageRotaryEmbedding qwenimage_rotary_embedding(const std::vector<QwenImageShape>& shapes, int64_t text_len,
                                                    const std::vector<int64_t>& axes_dim, c10::Device device,
                                                    double theta = 10000.0);

// Text rows first, then image rows: the order the joint attention sees its tokens in.
RotaryEmbedding joint_rotary_embedding(const QwenImageRotaryEmbedding& rotary);

}  // namespace diffuse
