#pragma once
// A model as placement sees it: units in the order forward runs them, each placed whole.
//   FluxTransformer2DModel  time_text_embed, context_embedder, x_embedder, transformer_blocks.N,
//                           single_transformer_blocks.N, norm_out, proj_out
//   T5EncoderModel          shared (the token embedding, used at entry), encoder.block.N,
//                           encoder.final_layer_norm
//   ClipTextModel           embeddings, encoder.layers.N, final_layer_norm
//   AutoencoderKL           encoder.conv_in, encoder.down_blocks.N, encoder.mid_block, encoder.conv_norm_out,
//                           encoder.conv_out, decoder.conv_in, decoder.mid_block, decoder.up_blocks.N,
//                           decoder.conv_norm_out, decoder.conv_out (+ quant_conv, post_quant_conv)
// Sizes come from the parameters' shapes: a model built from its config with uninitialized parameters
// has them without a weight being read.

#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/models/weights.hpp"

#include "diffuse/io/checkpoint.hpp"
#include "diffuse/placement/planner.hpp"

namespace diffuse {

struct ModelUnit {
  std::string name;                           // "transformer_blocks.3"
  std::shared_ptr<torch::nn::Module> module;
  uint64_t bytes = 0;                         // parameters and buffers
};

// The units of one of diffuse's models, in execution order. Parameters named by `keep_in_float32`
// (as WeightLoadOptions names them) count 4 bytes per element whatever their dtype now. Throws
// diffuse::Error for a module that is not one of the models above.
std::vector<ModelUnit> model_units(const torch::nn::Module& model, const std::vector<std::string>& keep_in_float32 = {});

// Names and sizes only, for the planner.
std::vector<PlacementUnit> placement_units(const std::vector<ModelUnit>& units);

// A rough bound on the largest unit's activations for one image at FLUX.1's usual sizes (1024x1024,
// 512 text tokens), in the model's dtype: what a device that runs units keeps free.
uint64_t activation_estimate(const torch::nn::Module& model);

// The bytes a checkpoint's weights take once loaded in `dtype` (floating-point tensors converted, those
// named by keep_in_float32 in float32), read from the headers alone. Names in `tied_aliases` that are
// copies of another stored tensor are not counted twice.
uint64_t checkpoint_bytes(const Checkpoint& checkpoint, c10::ScalarType dtype,
                          const std::vector<std::string>& keep_in_float32 = {},
                          const std::map<std::string, std::string>& tied_aliases = {});

}  // namespace diffuse
