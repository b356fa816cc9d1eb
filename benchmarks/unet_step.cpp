// unet_step: how long one call of Stable Diffusion's UNet takes, eagerly and replayed from a CUDA graph
// (models/graph_call.hpp), as the pipeline makes it under classifier-free guidance: batch 2 x the
// images, 77 text tokens. The UNet is read from a pipeline folder (make_random_pipeline --shape sd15
// writes one with random weights).
//
//   unet_step --model sd15-random --height 512 --width 512 --trace unet.json
//   python3 scripts/trace_summary.py unet.json --calls 2
//
// Each call is timed alone with CUDA events after a synchronize; min and median over --steps calls.

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "cli/cli.hpp"
#include "diffuse/dtype.hpp"
#include "diffuse/error.hpp"
#include "diffuse/models/graph_call.hpp"
#include "diffuse/models/unet_2d_condition.hpp"
#include "call_timer.hpp"
#include "kineto_trace.hpp"

namespace {

struct Arguments {
  std::string model;
  int64_t height = 512, width = 512, images = 1;
  int64_t steps = 20, warmup = 3;
  std::string dtype = "float16";
  std::string device = "cuda";
  std::string trace;
};

}  // namespace

int main(int argc, char** argv) {
  Arguments a;
  CLI::App app("Times one call of Stable Diffusion's UNet (batch 2 x images, as under guidance), eager and from a CUDA graph.",
               "unet_step");
  diffuse::cli::init(app, "unet_step --model DIR [options]");
  diffuse::cli::add_text(app, "--model", a.model, "DIR", "a pipeline folder (its unet/ is read)")->required();
  diffuse::cli::add_int(app, "--height", a.height, "image height in pixels", {.min = 8});
  diffuse::cli::add_int(app, "--width", a.width, "image width in pixels", {.min = 8});
  diffuse::cli::add_int(app, "--images", a.images, "images per call (the UNet sees twice as many)", {.min = 1});
  diffuse::cli::add_int(app, "--steps", a.steps, "timed calls per mode", {.min = 1});
  diffuse::cli::add_int(app, "--warmup", a.warmup, "untimed calls first", {.min = 0});
  diffuse::cli::add_text(app, "--dtype", a.dtype, "NAME", "weights and compute");
  diffuse::cli::add_text(app, "--device", a.device, "DEVICE", "cpu, cuda or cuda:N");
  diffuse::cli::add_text(app, "--trace", a.trace, "FILE", "also profile 2 eager calls into a Chrome trace (CUDA)");
  diffuse::cli::parse(app, argc, argv);
  try {
    const c10::Device device(a.device);
    const at::ScalarType dtype = diffuse::parse_dtype(a.dtype);
    diffuse::UNet2DConditionModel unet = diffuse::load_unet_2d_condition(a.model + "/unet", dtype, device);
    const diffuse::UNet2DConditionConfig& c = unet->config();
    const int64_t batch = 2 * a.images;
    const auto options = at::TensorOptions().dtype(dtype).device(device);
    at::manual_seed(0);
    const at::Tensor sample = at::randn({batch, c.in_channels, a.height / 8, a.width / 8}, options);
    const at::Tensor timestep = at::full({}, 500.0, at::TensorOptions().dtype(at::kFloat).device(device));
    const at::Tensor text = at::randn({batch, 77, c.cross_attention_dim.front()}, options);
    at::NoGradGuard no_grad;
    auto forward = [&](const std::vector<at::Tensor>& in) { return unet->forward(in[0], in[1], in[2]); };
    for (const bool graphs : {false, true}) {
      diffuse::CudaGraphCall call(forward, graphs);
      const std::function<void()> step = [&] { call({sample, timestep, text}); };
      for (int64_t i = 0; i < a.warmup; ++i) diffuse::bench::time_call_ms(step, device);
      std::vector<double> ms;
      for (int64_t i = 0; i < a.steps; ++i) ms.push_back(diffuse::bench::time_call_ms(step, device));
      std::sort(ms.begin(), ms.end());
      std::printf("unet %lldx%lld, batch %lld, %s, %s: min %.2f ms, median %.2f ms\n",
                  static_cast<long long>(a.height), static_cast<long long>(a.width), static_cast<long long>(batch),
                  a.dtype.c_str(), graphs && call.replayed() ? "CUDA graph" : "eager", ms.front(), ms[ms.size() / 2]);
    }
    if (!a.trace.empty())
      diffuse::bench::write_trace(a.trace, [&] {
        for (int i = 0; i < 2; ++i) diffuse::bench::time_call_ms([&] { forward({sample, timestep, text}); }, device);
      });
  } catch (const diffuse::Error& e) {
    std::cerr << "unet_step: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
