// qwenimage_transformer_step: how long one call of the Qwen-Image transformer takes on one device, at
// a list of image sizes. The model is built with random weights where it runs (no files), so the real
// 20B shape needs nothing but the GPU. `scripts/diffusers_transformer_step.py --family qwen-image`
// times diffusers' model on the same inputs; docs/benchmarks.md has the table.
//
//   qwenimage_transformer_step --resolutions 1024,1328 --json diffuse.json
//   qwenimage_transformer_step --resolutions 1024,1328 --cuda-graphs   (replayed, as the pipeline runs it)
//   qwenimage_transformer_step --shape tiny --device cpu --resolutions 64 --steps 2 --warmup 1
//
// Each call is timed alone with CUDA events (the wall clock on the CPU) after a synchronize; the
// minimum and median over --steps calls are reported with the peak memory.

#include <ATen/ATen.h>

#if DIFFUSE_HAS_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "call_timer.hpp"
#include "kineto_trace.hpp"
#include "cli/cli.hpp"
#include "diffuse/dtype.hpp"
#include "diffuse/error.hpp"
#include "diffuse/models/attention_backend.hpp"
#include "diffuse/models/graph_call.hpp"
#include "diffuse/models/qwenimage_transformer.hpp"
#include "diffuse/pipelines/flux_latents.hpp"

namespace {

struct Arguments {
  std::string shape = "qwen-image";
  std::optional<int64_t> layers;
  std::vector<int64_t> resolutions = {1024, 1328};
  int64_t text_tokens = 256;
  int64_t steps = 10, warmup = 3;
  std::string dtype = "bfloat16";
  std::string device = "cuda";
  std::string attention_backend = "auto";
  std::string json;
  std::string trace;  // a folder: trace_SIZE.json per size
  bool cuda_graphs = false;
  bool fuse_qkv = true;  // on CUDA only, as QwenImagePipeline
};

diffuse::QwenImageTransformerConfig config_of(const Arguments& a) {
  diffuse::QwenImageTransformerConfig c;  // diffusers' defaults are Qwen-Image's shape
  if (a.shape == "tiny") {
    c.in_channels = 16, c.out_channels = 4, c.num_layers = 2, c.attention_head_dim = 16, c.num_attention_heads = 4;
    c.joint_attention_dim = 32, c.axes_dims_rope = {8, 4, 4};
  }
  if (a.layers) c.num_layers = *a.layers;
  return c;
}

// Normal(0, 0.02) weights, ones for 1-D weights, zero biases, drawn on the model's device.
void init_in_place(torch::nn::Module& module) {
  at::NoGradGuard no_grad;
  at::manual_seed(0);
  for (auto& item : module.named_parameters(/*recurse=*/true)) {
    at::Tensor& p = item.value();
    const std::string& name = item.key();
    if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) p.zero_();
    else if (p.dim() == 1) p.fill_(1);
    else p.normal_(0.0, 0.02);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Arguments a;
  CLI::App app("Times one call of the Qwen-Image transformer with random weights, batch 1, per image size.",
               "qwenimage_transformer_step");
  diffuse::cli::init(app, "qwenimage_transformer_step [options]");
  diffuse::cli::add_choice(app, "--shape", a.shape, {"qwen-image", "tiny"},
                           "qwen-image (60 blocks of 24 x 128) or tiny (the fixture's)");
  diffuse::cli::add_int(app, "--layers", a.layers, "transformer blocks instead of the shape's", {.min = 1});
  app.add_option("--resolutions", a.resolutions, "square image sizes in pixels, multiples of 16")->delimiter(',');
  diffuse::cli::add_int(app, "--text-tokens", a.text_tokens, "prompt tokens", {.min = 1});
  diffuse::cli::add_int(app, "--steps", a.steps, "timed calls per size", {.min = 1});
  diffuse::cli::add_int(app, "--warmup", a.warmup, "untimed calls first", {.min = 0});
  diffuse::cli::add_text(app, "--dtype", a.dtype, "NAME", "weights and compute");
  diffuse::cli::add_text(app, "--device", a.device, "DEVICE", "cpu, cuda or cuda:N");
  diffuse::cli::add_text(app, "--attention-backend", a.attention_backend, "NAME", "auto, math, native, flash, cudnn");
  diffuse::cli::add_text(app, "--json", a.json, "FILE", "write the results there");
  diffuse::cli::add_text(app, "--trace", a.trace, "DIR",
                         "also profile 2 calls per size into DIR/trace_SIZE.json (CUDA; scripts/trace_summary.py)");
  app.add_flag("--cuda-graphs", a.cuda_graphs,
               "CUDA: replay each call from a CUDA graph, as the pipeline runs the transformer\n"
               "(models/graph_call.hpp), instead of launching its kernels one by one");
  app.add_flag("!--no-fuse-qkv", a.fuse_qkv,
               "CUDA: keep q/k/v as three products per stream (by default they are fused into one GEMM,\n"
               "fuse_qkv_projections, as the pipeline does)");
  diffuse::cli::parse(app, argc, argv);
  try {
    const c10::Device device(a.device);
    const at::ScalarType dtype = diffuse::parse_dtype(a.dtype);
    const diffuse::QwenImageTransformerConfig c = config_of(a);
    diffuse::QwenImageTransformer2DModel model(c, at::TensorOptions().dtype(dtype).device(device));
    init_in_place(*model);
    const bool fused_qkv = device.is_cuda() && a.fuse_qkv && model->fuse_qkv_projections();
    model->set_attention_backend(diffuse::parse_attention_backend(a.attention_backend));
    nlohmann::json results = nlohmann::json::array();
    for (int64_t size : a.resolutions) {
      if (size % 16 != 0) throw diffuse::Error("--resolutions: " + std::to_string(size) + " is not a multiple of 16");
      const int64_t side = size / 16;  // packed 2x2 latent patches of the 8x VAE
      at::Generator generator = diffuse::cpu_generator(0);
      const auto cpu = at::TensorOptions().dtype(at::kFloat);
      diffuse::QwenImageTransformerInputs in;
      in.hidden_states = at::normal(0.0, 1.0, {1, side * side, c.in_channels}, generator, cpu).to(device, dtype);
      in.encoder_hidden_states =
          at::normal(0.0, 1.0, {1, a.text_tokens, c.joint_attention_dim}, generator, cpu).to(device, dtype);
      in.timestep = at::full({1}, 0.5, at::TensorOptions().dtype(dtype).device(device));
      in.img_shapes = {{diffuse::QwenImageShape{1, side, side}}};
      at::NoGradGuard no_grad;
      // Replayed calls read the latents and timestep from the graph's buffers, and the rotary rows and
      // key padding of the first call, kept here while the graph lives.
      const diffuse::QwenImageCallTables tables = model->call_tables(in);
      diffuse::CudaGraphCall graph(
          [&](const std::vector<at::Tensor>& inputs) {
            diffuse::QwenImageTransformerInputs step = in;
            step.hidden_states = inputs[0];
            step.timestep = inputs[1];
            return model->forward(step);
          },
          a.cuda_graphs);
      const std::function<void()> call = [&] { graph({in.hidden_states, in.timestep}); };
      for (int64_t i = 0; i < a.warmup; ++i) diffuse::bench::time_call_ms(call, device);
#if DIFFUSE_HAS_CUDA
      if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
#endif
      std::vector<double> ms;
      for (int64_t i = 0; i < a.steps; ++i) ms.push_back(diffuse::bench::time_call_ms(call, device));
      std::sort(ms.begin(), ms.end());
      double peak_gb = 0;
#if DIFFUSE_HAS_CUDA
      if (device.is_cuda()) {
        const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
        peak_gb = static_cast<double>(stats.allocated_bytes[0].peak) / (1 << 30);
      }
#endif
      std::printf("diffuse qwen-image transformer %lldx%lld (%lld image + %lld text tokens, %lld blocks): min %.1f ms, "
                  "median %.1f ms, peak %.2f GiB%s%s\n",
                  static_cast<long long>(size), static_cast<long long>(size), static_cast<long long>(side * side),
                  static_cast<long long>(a.text_tokens), static_cast<long long>(c.num_layers), ms.front(),
                  ms[ms.size() / 2], peak_gb, graph.replayed() ? ", replayed from a CUDA graph" : "",
                  fused_qkv ? ", fused q/k/v" : "");
      results.push_back({{"resolution", size},
                         {"image_tokens", side * side},
                         {"text_tokens", a.text_tokens},
                         {"layers", c.num_layers},
                         {"cuda_graphs", a.cuda_graphs && device.is_cuda() && diffuse::CudaGraphCall::supported()},
                         {"fused_qkv", fused_qkv},
                         {"min_ms", ms.front()},
                         {"median_ms", ms[ms.size() / 2]},
                         {"peak_allocated_gib", peak_gb}});
      if (!a.json.empty()) std::ofstream(a.json) << results.dump(2) << "\n";
      if (!a.trace.empty())
        diffuse::bench::write_trace(a.trace + "/trace_" + std::to_string(size) + ".json", [&] {
          for (int i = 0; i < 2; ++i) diffuse::bench::time_call_ms(call, device);
        });
    }
  } catch (const diffuse::Error& e) {
    std::cerr << "qwenimage_transformer_step: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
