#pragma once
// Pipeline folders with random weights, in diffusers' format, for tests, demos and benchmarks: the
// same layout, config keys and tensor names as a published FLUX.1, SD 1.5 or Qwen-Image folder, at a
// named shape.

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/io/configs.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"

namespace diffuse {

// Every component's config for one named shape.
struct FluxShape {
  ClipTextConfig text_encoder;
  T5Config text_encoder_2;
  FluxTransformerConfig transformer;
  AutoencoderKLConfig vae;
  FlowMatchEulerDiscreteSchedulerConfig scheduler;
};

// "flux-tiny" (seconds on a CPU; the shapes of ../shared/fixtures/tiny-flux) or "flux-dev"
// (FLUX.1-dev's full shape, 12B transformer parameters). Throws diffuse::Error for other names.
FluxShape flux_shape(std::string_view name);
std::vector<std::string> flux_shape_names();

struct RandomPipelineOptions {
  std::string shape = "flux-tiny";
  c10::ScalarType dtype = c10::kFloat;  // of the stored weights
  uint64_t seed = 0;
  // A pipeline folder whose tokenizer/ (and tokenizer_2/ for FLUX.1) are copied; without it a
  // small byte-level CLIP vocabulary and a small SentencePiece model are made here.
  std::optional<std::filesystem::path> tokenizers_from;
  // Components larger than this are written as shards with an index, as diffusers does.
  uint64_t max_shard_bytes = uint64_t{5} << 30;
  // Qwen-Image: this many transformer blocks instead of the shape's (the real width with fewer blocks,
  // for a folder that fits a small disk).
  std::optional<int64_t> transformer_layers;
};

// Every shape write_random_pipeline knows: flux-tiny, flux-dev, sd15-tiny (the tiny-sd fixture's sizes),
// sd15 (Stable Diffusion 1.5's real sizes: an 860M-parameter UNet, CLIP ViT-L/14, the SD VAE),
// qwen-image-tiny (the tiny-qwenimage fixture's sizes) and qwen-image (Qwen-Image's: a 20B transformer,
// Qwen2.5-VL-7B's language model, the causal-3D VAE).
std::vector<std::string> random_pipeline_shape_names();
// Writes the folder of options.shape, FLUX.1, SD 1.5 or Qwen-Image (created if needed; existing files of
// the same names are replaced). A FLUX.1 shape goes to write_random_flux_pipeline.
void write_random_pipeline(const std::filesystem::path& folder, const RandomPipelineOptions& options = {});

// Writes the folder (created if needed; existing files of the same names are replaced).
void write_random_flux_pipeline(const std::filesystem::path& folder, const RandomPipelineOptions& options = {});

}  // namespace diffuse
