// flux_transformer_step: how long one call of the FLUX.1 transformer takes, on one GPU or split over
// several by context parallelism, at a list of image sizes. The model is built with random weights
// right where it runs (no files), so a FLUX.1-dev-shaped run needs nothing but the GPUs.
//
//   flux_transformer_step --resolutions 1024,2048 --json single.json
//   diffuse-launch --nproc-per-node 4 flux_transformer_step --ulysses-degree 4 --json ulysses4.json
//   flux_transformer_step --shape flux-tiny --device cpu --resolutions 64,128 --steps 3 --warmup 1
//
// Each step is timed alone: the ranks first meet (a barrier, then, on CUDA, a one-byte collective that
// the timed stream waits for, so every GPU starts the step together), then CUDA events (or the wall
// clock on the CPU) time forward() until its output is complete. A step lasts as long as its slowest
// rank; the minimum and median of that over the timed steps are reported, with the FLOPs of one
// call counted from the config (so the TFLOP/s are "effective": the same count whatever the split),
// and each rank's peak memory. scripts/benchmark.sh runs the whole table; docs/benchmarks.md has it.
// --help lists the options.

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/version.h>

#if DIFFUSE_HAS_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "diffuse/distributed/distributed.hpp"
#include "diffuse/dtype.hpp"
#include "diffuse/error.hpp"
#include "diffuse/models/flux_transformer.hpp"
#include "diffuse/models/graph_call.hpp"
#include "diffuse/models/layers.hpp"
#include "diffuse/parallel/context_parallel.hpp"
#include "diffuse/pipelines/flux_latents.hpp"
#include "diffuse/pipelines/random_pipeline.hpp"
#include "call_timer.hpp"
#include "kineto_trace.hpp"

namespace {

using diffuse::Error;

const char* kHelp = R"(usage: flux_transformer_step [options]

Times one call of the FLUX.1 transformer (FluxTransformer2DModel) with random weights, batch 1, at
each resolution: --warmup calls, then --steps timed calls. Alone it runs on one device; started by
diffuse-launch or torchrun (one process per GPU) it splits each call's sequence over all processes by
context parallelism (--ulysses-degree and/or --ring-degree, whose product must be the number of
processes). Rank 0 prints one line per resolution and, with --json, writes the results (rewritten
after each resolution, so a run cut short keeps what it finished).

  --shape flux-dev|flux-tiny   the transformer's config (default flux-dev: 19 + 38 blocks, 3072 wide)
  --layers D,S                 override the number of dual- and single-stream blocks (quick smoke runs)
  --resolutions LIST           image sizes in pixels, "1024" or "1024x768", comma-separated, multiples
                               of 16 (default 1024,2048)
  --text-tokens N              T5 tokens (default 512)
  --steps N[,N...]             timed calls per resolution; one value, or one per resolution (default 10)
  --warmup N[,N...]            untimed calls first, likewise (default 3)
  --ulysses-degree U           Ulysses degree (default 1)
  --ring-degree R              ring degree (default 1); both above 1: unified, ring across, Ulysses inside
  --dtype bfloat16|float16|float32   weights and compute (default bfloat16)
  --device cpu|cuda|cuda:N     where this process runs (default cuda:LOCAL_RANK when there is a GPU)
  --seed N                     weights and inputs (default 0; every rank draws the same)
  --json PATH                  write the results there (rank 0, atomically)
  --count-only                 print each resolution's tokens and FLOPs per call, build nothing
  --attention-backend NAME     auto, math, native, flash, efficient, cudnn (default auto)
  --cuda-graphs                one process on CUDA: replay each call from a CUDA graph (as the
                               pipelines do; models/graph_call.hpp) instead of launching its kernels
                               one by one from the CPU (the default: eager calls)
  --no-fuse-qkv                keep to_q/to_k/to_v as three GEMMs per stream. On CUDA the default fuses
                               them into one (fuse_qkv_projections, as the pipeline does); elsewhere
                               they are never fused
  --check                      with context parallelism: also run each size on every rank alone and
                               report the parallel output's relative error against it
  --check-float32              one process: after timing, compare each size's output with the same
                               weights and inputs in float32 (the model converted, TF32 off), and with
                               q/k/v unfused: the difference the bfloat16 fusions make (printed)
  --trace DIR                  after timing, profile 2 more calls per resolution and write a Chrome
                               trace (Kineto: every kernel with its time) to DIR/trace_HxW_rankR.json
  --help                       this text

Environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (set by the launcher).
)";

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "flux_transformer_step: " << message << "\n";
  std::exit(2);
}

int64_t parse_int(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  usage_error(flag + " expects an integer, got '" + text + "'");
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, separator);)
    if (!part.empty()) parts.push_back(part);
  return parts;
}

std::vector<int64_t> parse_ints(const std::string& flag, const std::string& text) {
  std::vector<int64_t> values;
  for (const std::string& part : split(text, ',')) values.push_back(parse_int(flag, part));
  if (values.empty()) usage_error(flag + " needs at least one value");
  return values;
}

struct Resolution {
  int64_t height = 0, width = 0;
};

struct Arguments {
  std::string shape = "flux-dev";
  std::vector<int64_t> layers;  // empty: the shape's
  std::vector<Resolution> resolutions = {{1024, 1024}, {2048, 2048}};
  int64_t text_tokens = 512;
  std::vector<int64_t> steps = {10}, warmup = {3};
  int64_t ulysses_degree = 1, ring_degree = 1;
  std::string dtype = "bfloat16";
  std::string device;
  uint64_t seed = 0;
  std::string json;
  bool count_only = false;
  std::string attention_backend = "auto";
  std::string trace;  // folder for a profiler trace of each resolution (CUDA, libtorch 2.x)
  bool check = false;
  bool check_float32 = false;
  bool cuda_graphs = false;
  bool fuse_qkv = true;  // on CUDA only, as FluxPipeline
};

Arguments parse(int argc, char** argv) {
  Arguments a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::cout << kHelp;
      std::exit(0);
    } else if (flag == "--shape") a.shape = value();
    else if (flag == "--layers") {
      a.layers = parse_ints(flag, value());
      if (a.layers.size() != 2 || a.layers[0] < 0 || a.layers[1] < 0)
        usage_error("--layers expects two counts D,S (dual- and single-stream blocks)");
    } else if (flag == "--resolutions") {
      a.resolutions.clear();
      for (const std::string& part : split(value(), ',')) {
        const std::vector<std::string> sides = split(part, 'x');
        if (sides.empty() || sides.size() > 2) usage_error("--resolutions: '" + part + "' is not N or HxW");
        const int64_t h = parse_int(flag, sides[0]), w = sides.size() == 2 ? parse_int(flag, sides[1]) : h;
        if (h < 16 || w < 16 || h % 16 != 0 || w % 16 != 0)
          usage_error("--resolutions: " + part + " is not a multiple of 16 pixels per side (one token is 16x16)");
        a.resolutions.push_back({h, w});
      }
      if (a.resolutions.empty()) usage_error("--resolutions needs at least one size");
    } else if (flag == "--text-tokens") a.text_tokens = parse_int(flag, value());
    else if (flag == "--steps") a.steps = parse_ints(flag, value());
    else if (flag == "--warmup") a.warmup = parse_ints(flag, value());
    else if (flag == "--ulysses-degree") a.ulysses_degree = parse_int(flag, value());
    else if (flag == "--ring-degree") a.ring_degree = parse_int(flag, value());
    else if (flag == "--dtype") a.dtype = value();
    else if (flag == "--device") a.device = value();
    else if (flag == "--seed") {
      const int64_t seed = parse_int(flag, value());
      if (seed < 0) usage_error("--seed must not be negative");
      a.seed = static_cast<uint64_t>(seed);
    } else if (flag == "--json") a.json = value();
    else if (flag == "--count-only") a.count_only = true;
    else if (flag == "--attention-backend") a.attention_backend = value();
    else if (flag == "--trace") a.trace = value();
    else if (flag == "--check") a.check = true;
    else if (flag == "--check-float32") a.check_float32 = true;
    else if (flag == "--cuda-graphs") a.cuda_graphs = true;
    else if (flag == "--no-fuse-qkv") a.fuse_qkv = false;
    else usage_error("unknown option '" + flag + "' (see --help)");
  }
  if (a.text_tokens < 1) usage_error("--text-tokens must be at least 1");
  auto check_counts = [&](const std::vector<int64_t>& counts, const std::string& flag, int64_t least) {
    if (counts.size() != 1 && counts.size() != a.resolutions.size())
      usage_error(flag + " takes one value or one per resolution (" + std::to_string(a.resolutions.size()) + ")");
    for (int64_t n : counts)
      if (n < least) usage_error(flag + " values must be at least " + std::to_string(least));
  };
  check_counts(a.steps, "--steps", 1);
  check_counts(a.warmup, "--warmup", 0);
  if (a.ulysses_degree < 1 || a.ring_degree < 1) usage_error("degrees must be at least 1");
  return a;
}

int64_t per_resolution(const std::vector<int64_t>& values, size_t index) {
  return values.size() == 1 ? values[0] : values[index];
}

// ---- the work -------------------------------------------------------------------------------------

// FLOPs of one forward call: 2*M*N*K for every matmul (M = tokens for per-token layers, the batch for
// the modulation and embedding layers), and 4*S*S*inner_dim per attention (q k^T and p v over the joint
// sequence S). Elementwise work, norms and the rotary embedding are left out, as usual.
double step_flops(const diffuse::FluxTransformerConfig& c, int64_t image_tokens, int64_t text_tokens,
                  int64_t batch = 1) {
  const double d = static_cast<double>(c.inner_dim()), mlp = 4 * d;
  const double img = static_cast<double>(image_tokens * batch), txt = static_cast<double>(text_tokens * batch);
  const double s = static_cast<double>(image_tokens + text_tokens), b = static_cast<double>(batch);
  auto linear = [](double m, double k, double n) { return 2 * m * k * n; };
  const double attention = 4 * s * s * d * b;

  // Dual-stream block, per stream: AdaLayerNormZero (d -> 6d), q/k/v and output projections, d -> 4d -> d MLP.
  auto stream = [&](double tokens) {
    return linear(b, d, 6 * d) + 4 * linear(tokens, d, d) + linear(tokens, d, mlp) + linear(tokens, mlp, d);
  };
  const double dual = stream(img) + stream(txt) + attention;
  // Single-stream block over the joint sequence: modulation (d -> 3d), q/k/v, the MLP's d -> 4d beside
  // them, and one projection of both back to d.
  const double joint = img + txt;
  const double single = linear(b, d, 3 * d) + 3 * linear(joint, d, d) + linear(joint, d, mlp) +
                        linear(joint, d + mlp, d) + attention;

  // Embeddings: timestep and guidance (256 sinusoids -> d -> d), pooled text (-> d -> d), the latent
  // and text projections; norm_out's modulation (d -> 2d) and proj_out.
  const double out_channels = static_cast<double>(c.patch_size * c.patch_size * c.out_channels);
  double edges = linear(b, 256, d) + linear(b, d, d) + linear(b, static_cast<double>(c.pooled_projection_dim), d) +
                 linear(b, d, d) + linear(img, static_cast<double>(c.in_channels), d) +
                 linear(txt, static_cast<double>(c.joint_attention_dim), d) + linear(b, d, 2 * d) +
                 linear(img, d, out_channels);
  if (c.guidance_embeds) edges += linear(b, 256, d) + linear(b, d, d);
  return static_cast<double>(c.num_layers) * dual + static_cast<double>(c.num_single_layers) * single + edges;
}

// The values init_random_parameters gives (normal with std 0.02, 1-D weights 1, biases 0; with them the
// residual stream of FLUX.1-dev's 57 blocks grows to a std of about 3 and the output stays near 1),
// drawn where each parameter lives: on a GPU from its seeded generator, so that 12B values take a
// fraction of a second instead of minutes of CPU draws and copies. Every rank draws the same weights.
void init_random_parameters_in_place(torch::nn::Module& module, uint64_t seed) {
  at::NoGradGuard no_grad;
  at::manual_seed(seed);  // every device's default generator
  for (auto& item : module.named_parameters(/*recurse=*/true)) {
    at::Tensor& p = item.value();
    const std::string& name = item.key();
    const bool is_bias = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
    if (is_bias) p.zero_();
    else if (p.dim() == 1) p.fill_(1);
    else p.normal_(0.0, 0.02);
  }
}

// One call's inputs as FluxPipeline makes them: packed noise latents, the (0, row, col) image ids, zero
// text ids, random prompt embeddings, timestep 1 (the first step's sigma) and guidance 3.5.
diffuse::FluxTransformerInputs make_inputs(const diffuse::FluxTransformerConfig& c, const Resolution& r,
                                           int64_t text_tokens, at::ScalarType dtype, c10::Device device,
                                           uint64_t seed) {
  const int64_t batch = 1, vae_scale_factor = 8;
  at::Generator generator = diffuse::cpu_generator(seed);
  const auto cpu_float = at::TensorOptions().dtype(at::kFloat);
  diffuse::FluxTransformerInputs in;
  in.hidden_states = diffuse::prepare_latents(batch, c.in_channels / 4, r.height, r.width, vae_scale_factor, dtype,
                                              device, generator);
  in.img_ids = diffuse::prepare_latent_image_ids(diffuse::flux_latent_size(r.height) / 2,
                                                 diffuse::flux_latent_size(r.width) / 2)
                   .to(device, dtype);
  in.txt_ids = at::zeros({text_tokens, 3}, at::TensorOptions().dtype(dtype).device(device));
  in.encoder_hidden_states =
      at::normal(0.0, 1.0, {batch, text_tokens, c.joint_attention_dim}, generator, cpu_float).to(device, dtype);
  in.pooled_projections =
      at::normal(0.0, 1.0, {batch, c.pooled_projection_dim}, generator, cpu_float).to(device, dtype);
  in.timestep = at::ones({batch}, at::TensorOptions().dtype(dtype).device(device));
  if (c.guidance_embeds) in.guidance = at::full({batch}, 3.5, at::TensorOptions().dtype(at::kFloat).device(device));
  return in;
}

// ---- timing and memory ----------------------------------------------------------------------------

void synchronize(c10::Device device) {
#if DIFFUSE_HAS_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#endif
}

// The ranks meet, then on CUDA the current stream waits for a one-byte collective: it completes on every
// GPU at about the same moment, however late each host arrived, so the steps start together.
void meet(diffuse::Communicator* world, c10::Device device) {
  if (world == nullptr) return;
  world->barrier();
  if (device.is_cuda()) {
    const at::Tensor byte = at::zeros({1}, at::TensorOptions().dtype(at::kByte).device(device));
    const at::Tensor all = at::empty({world->size()}, byte.options());
    world->all_gather_into(all, byte).wait();
  }
}

// Milliseconds of one forward call, from the moment the ranks met to the output's completion.
double timed_step(const std::function<at::Tensor()>& call, diffuse::Communicator* world, c10::Device device,
                  at::Tensor* output) {
  synchronize(device);
  meet(world, device);
  return diffuse::bench::time_call_ms([&] { *output = call(); }, device);
}

struct PeakMemory {
  double allocated_gb = 0, reserved_gb = 0;  // GiB
};

void reset_peak_memory(c10::Device device) {
#if DIFFUSE_HAS_CUDA
  if (device.is_cuda()) {
    synchronize(device);
    // Cached blocks from the last resolution would count as this one's reserved memory.
    c10::cuda::CUDACachingAllocator::emptyCache();
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
  }
#endif
}

PeakMemory peak_memory(c10::Device device) {
  PeakMemory peak;
#if DIFFUSE_HAS_CUDA
  if (device.is_cuda()) {
    // Statistic 0 is the aggregate over pool kinds.
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    peak.allocated_gb = static_cast<double>(stats.allocated_bytes[0].peak) / (1 << 30);
    peak.reserved_gb = static_cast<double>(stats.reserved_bytes[0].peak) / (1 << 30);
  }
#endif
  return peak;
}

std::string device_name(c10::Device device) {
#if DIFFUSE_HAS_CUDA
  if (device.is_cuda()) return at::cuda::getDeviceProperties(device.index())->name;
#endif
  return device.str();
}

// ---- results --------------------------------------------------------------------------------------

struct Result {
  Resolution resolution;
  int64_t image_tokens = 0, text_tokens = 0, steps = 0, warmup = 0;
  std::vector<double> step_ms;  // each timed step: the slowest rank's time
  double ms_min = 0, ms_median = 0, tflops_per_step = 0, effective_tflops_per_s = 0;
  std::vector<double> peak_allocated_gb, peak_reserved_gb;  // per rank
  double output_std = 0;
  bool output_finite = true;
  // --check: max|parallel - one GPU| / max|one GPU| over the output, on the worst rank (-1: not checked).
  double check_error = -1;
};

struct Run {
  std::string mode, shape, dtype, device;
  int world_size = 1;
  int64_t ring_degree = 1, ulysses_degree = 1;
  int64_t parameters = 0;
  bool cuda_graphs = false, fused_qkv = false;
  std::vector<Result> results;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (char ch : text) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) continue;
    out += ch;
  }
  return out + "\"";
}

std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  std::ostringstream out;
  out << std::setprecision(6) << value;
  return out.str();
}

std::string json_numbers(const std::vector<double>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + json_number(values[i]);
  return out + "]";
}

std::string to_json(const Run& run) {
  std::ostringstream out;
  out << "{\n  \"mode\": " << json_string(run.mode) << ",\n  \"world_size\": " << run.world_size
      << ",\n  \"ring_degree\": " << run.ring_degree << ",\n  \"ulysses_degree\": " << run.ulysses_degree
      << ",\n  \"device\": " << json_string(run.device) << ",\n  \"dtype\": " << json_string(run.dtype)
      << ",\n  \"shape\": " << json_string(run.shape) << ",\n  \"parameters\": " << run.parameters
      << ",\n  \"libtorch\": " << json_string(TORCH_VERSION)
      << ",\n  \"cuda_graphs\": " << (run.cuda_graphs ? "true" : "false")
      << ",\n  \"fused_qkv\": " << (run.fused_qkv ? "true" : "false") << ",\n  \"results\": [";
  for (size_t i = 0; i < run.results.size(); ++i) {
    const Result& r = run.results[i];
    out << (i ? "," : "") << "\n    {\"height\": " << r.resolution.height << ", \"width\": " << r.resolution.width
        << ", \"image_tokens\": " << r.image_tokens << ", \"text_tokens\": " << r.text_tokens
        << ", \"warmup\": " << r.warmup << ", \"steps\": " << r.steps << ",\n     \"ms_min\": " << json_number(r.ms_min)
        << ", \"ms_median\": " << json_number(r.ms_median) << ", \"ms_steps\": " << json_numbers(r.step_ms)
        << ",\n     \"tflops_per_step\": " << json_number(r.tflops_per_step)
        << ", \"effective_tflops_per_s\": " << json_number(r.effective_tflops_per_s)
        << ",\n     \"peak_allocated_gb_per_rank\": " << json_numbers(r.peak_allocated_gb)
        << ", \"peak_reserved_gb_per_rank\": " << json_numbers(r.peak_reserved_gb)
        << ",\n     \"output_std\": " << json_number(r.output_std)
        << ", \"output_finite\": " << (r.output_finite ? "true" : "false")
        << ", \"check_error_vs_one_gpu\": " << json_number(r.check_error) << "}";
  }
  out << "\n  ]\n}\n";
  return out.str();
}

// Written next to its final name, then renamed: a reader never sees half a file.
void write_atomically(const std::filesystem::path& path, const std::string& text) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  const std::filesystem::path temporary = path.string() + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) throw Error("cannot write " + temporary.string());
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::filesystem::remove(temporary, error);
    throw Error("cannot move the results to " + path.string());
  }
}

std::string mode_of(int64_t ring, int64_t ulysses) {
  if (ring > 1 && ulysses > 1) return "unified";
  if (ring > 1) return "ring";
  if (ulysses > 1) return "ulysses";
  return "single";
}

std::string fixed(double value, int digits) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(digits) << value;
  return out.str();
}

// 4 significant digits: TFLOPs of flux-dev (74.42) and of flux-tiny (0.0004956) alike.
std::string significant(double value) {
  std::ostringstream out;
  out << std::setprecision(4) << value;
  return out.str();
}

diffuse::FluxTransformerConfig config_of(const Arguments& args) {
  diffuse::FluxTransformerConfig config = diffuse::flux_shape(args.shape).transformer;
  if (!args.layers.empty()) config.num_layers = args.layers[0], config.num_single_layers = args.layers[1];
  return config;
}

int count_only(const Arguments& args) {
  const diffuse::FluxTransformerConfig config = config_of(args);
  for (const Resolution& r : args.resolutions) {
    const int64_t image_tokens = diffuse::flux_image_seq_len(r.height, r.width);
    std::cout << r.height << "x" << r.width << ": " << image_tokens << " image + " << args.text_tokens
              << " text tokens, " << significant(step_flops(config, image_tokens, args.text_tokens) / 1e12)
              << " TFLOP per call" << std::endl;
  }
  return 0;
}

// max|a-b| / max|b|: how --check and --check-float32 state a difference.
double relative_error(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max()).item<double>();
}

// --check-float32: each timed size's inputs and output, compared after timing.
struct PrecisionCase {
  Resolution resolution;
  diffuse::FluxTransformerInputs inputs;
  at::Tensor output;  // as timed, in float32
};

diffuse::FluxTransformerInputs to_float32(diffuse::FluxTransformerInputs in) {
  for (at::Tensor* t : {&in.hidden_states, &in.encoder_hidden_states, &in.pooled_projections, &in.timestep,
                        &in.img_ids, &in.txt_ids, &in.guidance})
    if (t->defined()) *t = t->to(at::kFloat);
  return in;
}

// How far the timed outputs are from the same weights in float32, and what fusing q/k/v changes in
// the low-precision call. Destructive, so it runs last: the weights are first given a storage each
// (fuse_qkv_projections undone: three products again), then converted to float32.
void check_against_float32(diffuse::FluxTransformer2DModel& model, const std::vector<PrecisionCase>& cases) {
  const bool was_fused = model->qkv_projections_fused();
  for (at::Tensor& p : model->parameters()) p.set_data(p.data().clone());
  std::vector<at::Tensor> unfused;
  for (const PrecisionCase& c : cases) unfused.push_back(model->forward(c.inputs).to(at::kFloat));
  at::globalContext().setFloat32MatmulPrecision("highest");  // no TF32 in the reference
  model->to(at::kFloat);
  for (size_t i = 0; i < cases.size(); ++i) {
    const at::Tensor reference = model->forward(to_float32(cases[i].inputs));
    std::cout << cases[i].resolution.height << "x" << cases[i].resolution.width
              << " against float32 (max|a-b|/max|b|): as timed (q/k/v " << (was_fused ? "fused" : "unfused") << ") "
              << significant(relative_error(cases[i].output, reference)) << ", q/k/v unfused "
              << significant(relative_error(unfused[i], reference)) << "; as timed against unfused "
              << significant(relative_error(cases[i].output, unfused[i])) << std::endl;
  }
}

int run(const Arguments& args) {
  diffuse::DistributedOptions dist_options;
  if (!args.device.empty()) dist_options.device = args.device;
  diffuse::Distributed dist = diffuse::Distributed::init(dist_options);
  const bool main_rank = dist.is_main_process();
  c10::Device device = dist.device();
#if DIFFUSE_HAS_CUDA
  if (device.is_cuda() && !device.has_index()) device = c10::Device(c10::kCUDA, c10::cuda::current_device());
#endif
  const at::ScalarType dtype = diffuse::parse_dtype(args.dtype);

  const int64_t degree = args.ring_degree * args.ulysses_degree;
  if (dist.world_size() > 1 && degree != dist.world_size())
    throw Error("--ring-degree " + std::to_string(args.ring_degree) + " x --ulysses-degree " +
                std::to_string(args.ulysses_degree) + " = " + std::to_string(degree) + " must equal the " +
                std::to_string(dist.world_size()) + " processes (each process holds one part of the sequence)");
  if (dist.world_size() == 1 && degree > 1)
    throw Error("context parallelism over " + std::to_string(degree) +
                " ranks needs that many processes: start this program with diffuse-launch --nproc-per-node " +
                std::to_string(degree) + " (or torchrun --no-python)");
  if (args.check_float32 && dist.world_size() > 1)
    throw Error("--check-float32 compares one process's calls; run it without the launcher");

  const diffuse::FluxTransformerConfig config = config_of(args);

  at::NoGradGuard no_grad;
  const auto build_start = std::chrono::steady_clock::now();
  diffuse::FluxTransformer2DModel model(config, at::TensorOptions().dtype(dtype).device(device));
  if (device.is_cpu()) diffuse::init_random_parameters(*model, args.seed);
  else init_random_parameters_in_place(*model, args.seed);
  synchronize(device);
  const double build_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - build_start).count();

  model->set_attention_backend(diffuse::parse_attention_backend(args.attention_backend));
  // What FluxPipeline runs on CUDA: one q/k/v GEMM per stream (weights re-laid in place, no copy kept).
  const bool fused_qkv = device.is_cuda() && args.fuse_qkv && model->fuse_qkv_projections();
  diffuse::Communicator* world = nullptr;
  if (dist.world_size() > 1) {
    world = &dist.communicator();
    diffuse::ContextParallelConfig parallel;
    parallel.ring_degree = args.ring_degree;
    parallel.ulysses_degree = args.ulysses_degree;
    // The world outlives the model's use of it; share it without ownership.
    model->enable_parallelism(parallel, std::shared_ptr<diffuse::Communicator>(world, [](diffuse::Communicator*) {}));
  }

  Run run;
  run.mode = mode_of(args.ring_degree, args.ulysses_degree);
  run.shape = args.shape;
  run.dtype = diffuse::dtype_name(dtype);
  run.device = device_name(device);
  run.world_size = dist.world_size();
  run.ring_degree = args.ring_degree;
  run.ulysses_degree = args.ulysses_degree;
  run.cuda_graphs = args.cuda_graphs && world == nullptr && device.is_cuda() && diffuse::CudaGraphCall::supported();
  for (const auto& p : model->parameters()) run.parameters += p.numel();
  run.fused_qkv = fused_qkv;

  if (main_rank) {
    const double parameters = static_cast<double>(run.parameters);
    const std::string degrees = run.mode == "unified"
                                    ? std::to_string(args.ring_degree) + "x" + std::to_string(args.ulysses_degree)
                                    : std::to_string(degree);
    const std::string split = world ? run.mode + " " + degrees : "one process";
    std::cout << args.shape << " transformer (" << config.num_layers << " + " << config.num_single_layers << " blocks, "
              << (parameters >= 1e9 ? fixed(parameters / 1e9, 2) + " B" : significant(parameters / 1e6) + " M")
              << " parameters, " << run.dtype << ") on " << dist.world_size() << " x " << run.device << ", " << split
              << "; built in " << fixed(build_seconds, 1) << " s"
              << (run.cuda_graphs ? "; calls replayed from CUDA graphs" : "; eager calls")
              << (fused_qkv ? "; q/k/v fused" : "") << std::endl;
  }

  std::vector<PrecisionCase> precision_cases;
  for (size_t i = 0; i < args.resolutions.size(); ++i) {
    const Resolution& resolution = args.resolutions[i];
    Result result;
    result.resolution = resolution;
    result.image_tokens = diffuse::flux_image_seq_len(resolution.height, resolution.width);
    result.text_tokens = args.text_tokens;
    result.steps = per_resolution(args.steps, i);
    result.warmup = per_resolution(args.warmup, i);
    result.tflops_per_step = step_flops(config, result.image_tokens, result.text_tokens) / 1e12;

    const diffuse::FluxTransformerInputs inputs =
        make_inputs(config, resolution, args.text_tokens, dtype, device, args.seed + 1);
    // The call, eager or replayed from a graph that reads the latents and timestep from its buffers.
    diffuse::CudaGraphCall graph(
        [&](const std::vector<at::Tensor>& in) {
          diffuse::FluxTransformerInputs step = inputs;
          step.hidden_states = in[0];
          step.timestep = in[1];
          return model->forward(step);
        },
        args.cuda_graphs && world == nullptr);
    const std::function<at::Tensor()> call = [&] { return graph({inputs.hidden_states, inputs.timestep}); };
    reset_peak_memory(device);
    at::Tensor output;
    for (int64_t s = 0; s < result.warmup; ++s) timed_step(call, world, device, &output);
    std::vector<double> mine;
    for (int64_t s = 0; s < result.steps; ++s) mine.push_back(timed_step(call, world, device, &output));
    const PeakMemory peak = peak_memory(device);
    if (!args.trace.empty())
      diffuse::bench::write_trace(args.trace + "/trace_" + std::to_string(resolution.height) + "x" + std::to_string(resolution.width) +
                      "_rank" + std::to_string(dist.rank()) + ".json",
                  [&] {
                    for (int s = 0; s < 2; ++s) timed_step(call, world, device, &output);
                  });
    // Random weights still have to give numbers: a step over infinities or NaNs measures nothing useful.
    const at::Tensor out = output.to(at::kFloat);
    result.output_finite = out.isfinite().all().item<bool>();
    result.output_std = out.std().item<double>();
    double check_error = -1;
    if (args.check && world) {
      // The same inputs through the same weights on this GPU alone: what one GPU would give.
      const diffuse::ContextParallelConfig parallel = model->parallel_mesh()->config();
      model->disable_parallelism();
      const at::Tensor alone = model->forward(inputs).to(at::kFloat);
      model->enable_parallelism(parallel, std::shared_ptr<diffuse::Communicator>(world, [](diffuse::Communicator*) {}));
      check_error = relative_error(out, alone);
    }

    // Rank 0 collects every rank's step times and peaks.
    std::ostringstream line;
    line << std::setprecision(9) << check_error << " " << peak.allocated_gb << " " << peak.reserved_gb;
    for (double ms : mine) line << " " << ms;
    const std::vector<std::string> lines = dist.gather_to_main(std::vector<std::string>{line.str()});
    if (!main_rank) continue;
    result.step_ms.assign(static_cast<size_t>(result.steps), 0.0);
    for (const std::string& text : lines) {
      std::istringstream in(text);
      double check = 0, allocated = 0, reserved = 0;
      in >> check >> allocated >> reserved;
      result.check_error = std::max(result.check_error, check);
      result.peak_allocated_gb.push_back(allocated);
      result.peak_reserved_gb.push_back(reserved);
      for (double& slowest : result.step_ms) {
        double ms = 0;
        in >> ms;
        slowest = std::max(slowest, ms);
      }
    }
    result.ms_min = *std::min_element(result.step_ms.begin(), result.step_ms.end());
    result.ms_median = median(result.step_ms);
    result.effective_tflops_per_s = result.tflops_per_step / (result.ms_median / 1000);
    const double max_allocated = *std::max_element(result.peak_allocated_gb.begin(), result.peak_allocated_gb.end());
    const double max_reserved = *std::max_element(result.peak_reserved_gb.begin(), result.peak_reserved_gb.end());
    std::cout << resolution.height << "x" << resolution.width << " (" << result.image_tokens << " image + "
              << result.text_tokens << " text tokens): median " << fixed(result.ms_median, 1) << " ms, min "
              << fixed(result.ms_min, 1) << " ms over " << result.steps << (result.steps == 1 ? " step; " : " steps; ")
              << significant(result.tflops_per_step) << " TFLOP per step, "
              << significant(result.effective_tflops_per_s) << " TFLOP/s"
              << (device.is_cuda() ? "; peak " + fixed(max_allocated, 1) + " GiB allocated, " + fixed(max_reserved, 1) +
                                         " GiB reserved (largest rank)"
                                   : std::string())
              << "; output std " << fixed(result.output_std, 3) << (result.output_finite ? "" : " NOT FINITE")
              << (result.check_error >= 0 ? "; vs one GPU: max relative error " + significant(result.check_error)
                                          : std::string())
              << std::endl;
    if (!result.output_finite)
      std::cerr << "flux_transformer_step: warning: the output at " << resolution.height << "x" << resolution.width
                << " has infinities or NaNs" << std::endl;
    run.results.push_back(std::move(result));
    if (!args.json.empty()) write_atomically(args.json, to_json(run));
    if (args.check_float32) precision_cases.push_back({resolution, inputs, out});
  }
  if (main_rank && !args.json.empty()) std::cout << "wrote " << args.json << std::endl;
  if (!precision_cases.empty()) check_against_float32(model, precision_cases);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Arguments args = parse(argc, argv);
  try {
    return args.count_only ? count_only(args) : run(args);
  } catch (const diffuse::Error& e) {
    std::cerr << "flux_transformer_step: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "flux_transformer_step: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "flux_transformer_step: " << e.what() << "\n";
    return 1;
  }
}
