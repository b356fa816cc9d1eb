// Device maps: memory sizes, the DeviceMap value, the planner (every strategy and its edges, with
// made-up devices and FLUX.1-dev's real sizes), and applying maps on the CPU: a transformer split
// between "cpu" and "disk", every model under hooks, model and sequential offload, and the errors.

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <numeric>

#include "diffuse/error.hpp"
#include "diffuse/io/inspect.hpp"
#include "diffuse/io/json_config.hpp"
#include "diffuse/models/unet_2d_condition.hpp"
#include "diffuse/models/weights.hpp"
#include "diffuse/pipelines/flux_pipeline.hpp"
#include "diffuse/pipelines/random_pipeline.hpp"
#include "diffuse/placement/device_memory.hpp"
#include "diffuse/placement/dispatch.hpp"
#include "diffuse/placement/load_model.hpp"
#include "diffuse/placement/model_units.hpp"
#include "diffuse/placement/offloaded_tensors.hpp"
#include "diffuse/placement/planner.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t GB = 1000000000ull;
constexpr uint64_t MB = 1000000ull;

uint64_t bytes_on(const DevicePlan& plan, const std::string& device) {
  for (const auto& [name, bytes] : plan.bytes)
    if (name == device) return bytes;
  return 0;
}

uint64_t sum_bytes(const std::vector<PlacementUnit>& units) {
  return std::accumulate(units.begin(), units.end(), uint64_t{0},
                         [](uint64_t s, const PlacementUnit& u) { return s + u.bytes; });
}

// The units of one of FLUX.1-dev's models, from its config alone: built on the meta device, so that no
// memory is allocated, in bfloat16.
template <typename Model, typename Config>
std::vector<PlacementUnit> flux_dev_units(const Config& config) {
  Model model(config, at::TensorOptions().dtype(at::kBFloat16).device(c10::kMeta));
  return placement_units(model_units(*model));
}

struct FluxDevSizes {
  std::vector<PlacementUnit> transformer, t5, clip, vae;
};

const FluxDevSizes& flux_dev() {
  static const FluxDevSizes sizes = [] {
    const FluxShape shape = flux_shape("flux-dev");
    FluxDevSizes s;
    s.transformer = flux_dev_units<FluxTransformer2DModel>(shape.transformer);
    s.t5 = flux_dev_units<T5EncoderModel>(shape.text_encoder_2);
    s.clip = flux_dev_units<ClipTextModel>(shape.text_encoder);
    s.vae = flux_dev_units<AutoencoderKL>(shape.vae);
    return s;
  }();
  return sizes;
}

// Units are placed in order and a device is never revisited: the devices of consecutive units appear
// as contiguous runs, in budget order.
void expect_contiguous(const DeviceMap& map, const std::vector<std::string>& device_order) {
  size_t position = 0;
  for (const auto& [unit, device] : map.entries()) {
    while (position < device_order.size() && device_order[position] != device) ++position;
    ASSERT_LT(position, device_order.size()) << unit << " on " << device << " breaks the order";
  }
}

// ---- the reference call on the tiny-flux fixture ----------------------------------------------------

FluxPipeline tiny_pipeline(FluxPipelineOptions options = {}) {
  return FluxPipeline::from_pretrained(test::tiny_flux_pipeline(), std::move(options));
}

// The unsplit pipeline's output on `device`, made once per device.
const GenerateOutput& unsplit_output(c10::Device device) {
  static std::map<std::string, GenerateOutput> outputs;
  auto it = outputs.find(device.str());
  if (it == outputs.end())
    it = outputs.emplace(device.str(), tiny_pipeline({.device = device.str()}).generate(test::reference_request())).first;
  return it->second;
}

// The same output as the unsplit pipeline on the device that ran it: bitwise on the CPU; on CUDA within
// 1e-5 (kernels may pick other algorithms for other allocations). Both match diffusers to 1e-4.
void expect_same_output(const GenerateOutput& out, const char* what, c10::Device device = c10::kCPU) {
  const GenerateOutput& reference = unsplit_output(device);
  test::print_error((std::string(what) + " latents").c_str(), out.latents, reference.latents);
  if (device.is_cpu()) {
    EXPECT_TRUE(at::equal(out.latents.cpu(), reference.latents.cpu())) << what;
    EXPECT_TRUE(at::equal(out.image_tensor.cpu(), reference.image_tensor.cpu())) << what;
  } else {
    EXPECT_TENSORS_CLOSE(out.latents, reference.latents, 1e-5) << what;
    EXPECT_TENSORS_CLOSE(out.image_tensor, reference.image_tensor, 1e-5) << what;
  }
  EXPECT_TENSORS_CLOSE(out.image_tensor, test::tiny_flux_reference().load("pipeline_output_pt"), 1e-4);
}

}  // namespace

// ---- sizes and names ------------------------------------------------------------------------------

TEST(MemorySize, ParsesDecimalAndBinaryUnitsAndBytes) {
  EXPECT_EQ(parse_memory_size("16GB"), 16 * GB);
  EXPECT_EQ(parse_memory_size("16GiB"), 16ull << 30);
  EXPECT_EQ(parse_memory_size("500MB"), 500 * MB);
  EXPECT_EQ(parse_memory_size("1.5GB"), 1500 * MB);
  EXPECT_EQ(parse_memory_size("2KiB"), 2048u);
  EXPECT_EQ(parse_memory_size("16gb"), 16 * GB);
  EXPECT_EQ(parse_memory_size(" 3 MiB "), 3u << 20);
  EXPECT_EQ(parse_memory_size("123456"), 123456u);
  EXPECT_EQ(parse_memory_size("1TB"), 1000 * GB);
  EXPECT_EQ(parse_memory_size("0"), 0u);
}

TEST(MemorySize, RejectsWhatIsNotASize) {
  for (const char* bad : {"", "GB", "abc", "-1GB", "16XB", "1.2.3GB", "16 G B", "."})
    EXPECT_ERROR_CONTAINS(parse_memory_size(bad), "is not valid");
}

TEST(MemorySize, MaxMemoryIsCanonicalAndOrderedGpusCpuDisk) {
  const MemoryBudget budget = parse_max_memory({{"disk", "1TB"}, {"cpu", "64GB"}, {"cuda:1", "16GB"}, {"0", "8GiB"}});
  ASSERT_EQ(budget.size(), 4u);
  EXPECT_EQ(budget[0], (std::pair<std::string, uint64_t>{"cuda:0", 8ull << 30}));
  EXPECT_EQ(budget[1], (std::pair<std::string, uint64_t>{"cuda:1", 16 * GB}));
  EXPECT_EQ(budget[2].first, "cpu");
  EXPECT_EQ(budget[3].first, "disk");
  EXPECT_EQ(parse_max_memory({{"cuda:10", "1GB"}, {"cuda:2", "1GB"}})[0].first, "cuda:2");
  EXPECT_ERROR_CONTAINS(parse_max_memory({{"cuda", "1GB"}, {"cuda:0", "2GB"}}), "names cuda:0 twice");
  EXPECT_ERROR_CONTAINS(parse_max_memory({{"tpu", "1GB"}}), "device 'tpu' is not a placement device");
  EXPECT_ERROR_CONTAINS(parse_max_memory({{"cuda:0", "lots"}}), "max_memory[\"cuda:0\"]: memory size 'lots'");
}

TEST(DeviceMap, IsAnOrderedValueThatPrintsAsJson) {
  DeviceMap map{{"text_encoder", "cuda:1"}, {"text_encoder_2", "cuda"}, {"vae", "cpu"}};
  EXPECT_EQ(map.to_json(), R"({"text_encoder": "cuda:1", "text_encoder_2": "cuda:0", "vae": "cpu"})");
  EXPECT_EQ(DeviceMap::from_json(map.to_json()), map);
  std::ostringstream printed;
  printed << map;
  EXPECT_EQ(printed.str(), map.to_json());
  EXPECT_EQ(map.devices(), (std::vector<std::string>{"cuda:1", "cuda:0", "cpu"}));
  map.set("text_encoder", "disk");
  EXPECT_EQ(map.entries().front(), (DeviceMap::Entry{"text_encoder", "disk"}));
  EXPECT_ERROR_CONTAINS(map.at("transformer"), "no entry 'transformer'");
  EXPECT_ERROR_CONTAINS((DeviceMap{{"a", "cpu"}, {"a", "disk"}}), "names 'a' twice");
  EXPECT_ERROR_CONTAINS(DeviceMap::from_json("[1]"), "must be an object");
}

TEST(DeviceMap, TheLongestCoveringEntryDecides) {
  const DeviceMap map{{"", "cuda:0"}, {"transformer_blocks", "cpu"}, {"transformer_blocks.1", "disk"}};
  EXPECT_EQ(*map.device_of("x_embedder"), "cuda:0");
  EXPECT_EQ(*map.device_of("transformer_blocks.0"), "cpu");
  EXPECT_EQ(*map.device_of("transformer_blocks.1.attn.to_q.weight"), "disk");
  EXPECT_EQ(*map.device_of("transformer_blocks.10"), "cpu");  // "transformer_blocks.1" does not cover ".10"
  const DeviceMap a{{"a", "cpu"}};
  EXPECT_EQ(a.device_of("ab"), nullptr);
}

// ---- the planner ----------------------------------------------------------------------------------

TEST(Planner, FluxDevUnitsHaveTheRealSizes) {
  const FluxDevSizes& s = flux_dev();
  // 7 small modules + 19 double + 38 single blocks; 1 + 24 + 1 for T5; 1 + 23 + 1 for CLIP-L.
  EXPECT_EQ(s.transformer.size(), 5u + 19 + 38);
  EXPECT_EQ(s.t5.size(), 1u + 24 + 1);
  EXPECT_EQ(s.clip.size(), 1u + 12 + 1);
  EXPECT_EQ(s.transformer[0].name, "time_text_embed");
  EXPECT_EQ(s.transformer[3].name, "transformer_blocks.0");
  EXPECT_EQ(s.transformer[22].name, "single_transformer_blocks.0");
  EXPECT_EQ(s.transformer.back().name, "proj_out");
  EXPECT_EQ(s.t5.front().name, "shared");
  EXPECT_EQ(s.t5.back().name, "encoder.final_layer_norm");
  EXPECT_EQ(s.vae.front().name, "encoder.conv_in");
  EXPECT_EQ(format_bytes(sum_bytes(s.transformer)), "23.80 GB");
  EXPECT_EQ(format_bytes(sum_bytes(s.clip)), "246.12 MB");
  EXPECT_EQ(format_bytes(sum_bytes(s.vae)), "167.64 MB");
  EXPECT_EQ(format_bytes(sum_bytes(s.t5)), "9.52 GB");  // 4.76B parameters, as the published 4.99 + 4.53 GB shards
  std::cout << "[ sizes ] transformer " << format_bytes(sum_bytes(s.transformer)) << ", double block "
            << format_bytes(s.transformer[3].bytes) << ", single block " << format_bytes(s.transformer[22].bytes)
            << ", T5 " << format_bytes(sum_bytes(s.t5)) << ", CLIP " << format_bytes(sum_bytes(s.clip)) << ", VAE "
            << format_bytes(sum_bytes(s.vae)) << "\n";
}

TEST(Planner, AutoSpreadsTheFluxDevTransformerEvenlyOverTwo16GbGpus) {
  const auto& units = flux_dev().transformer;
  const MemoryBudget budget = parse_max_memory({{"cuda:0", "16GB"}, {"cuda:1", "16GB"}});
  const uint64_t activations = 500 * MB;
  for (auto strategy : {PlacementStrategy::Auto, PlacementStrategy::Balanced}) {
    const DevicePlan plan = plan_model_placement(units, budget, {strategy, activations, "transformer"});
    ASSERT_EQ(plan.map.size(), units.size());
    expect_contiguous(plan.map, {"cuda:0", "cuda:1"});
    const uint64_t on0 = bytes_on(plan, "cuda:0"), on1 = bytes_on(plan, "cuda:1");
    EXPECT_EQ(on0 + on1, sum_bytes(units));
    EXPECT_LE(on0 + activations, 16 * GB);
    EXPECT_LE(on1 + activations, 16 * GB);
    // Even: each GPU holds about half (within a double block and the buffer).
    EXPECT_NEAR(static_cast<double>(on0), static_cast<double>(on1), 1.5e9);
    EXPECT_EQ(plan.map.at("transformer_blocks.0"), "cuda:0");
    EXPECT_EQ(plan.map.at("proj_out"), "cuda:1");
    std::cout << "[ plan ] " << placement_strategy_name(strategy) << ": cuda:0 " << format_bytes(on0) << ", cuda:1 "
              << format_bytes(on1) << "\n";
  }
}

TEST(Planner, Sd15UNetUnitsSpreadOverTwoGpusDownBlocksFirst) {
  // SD 1.5's UNet: diffusers' defaults with CLIP-L's 768-wide text, in float16, built on the meta device.
  UNet2DConditionConfig config;
  config.cross_attention_dim = {768, 768, 768, 768};
  UNet2DConditionModel unet(config, at::TensorOptions().dtype(at::kHalf).device(c10::kMeta));
  const auto units = placement_units(model_units(*unet));
  ASSERT_EQ(units.size(), 14u);
  EXPECT_EQ(units[3].name, "down_blocks.0");
  EXPECT_EQ(units[7].name, "mid_block");
  EXPECT_EQ(units.back().name, "conv_out");
  EXPECT_EQ(units[0].bytes, 0u);  // time_proj has no weights
  EXPECT_EQ(format_bytes(sum_bytes(units)), "1.72 GB");  // 859.52M parameters
  const uint64_t activations = activation_estimate(*unet);
  const DevicePlan plan = plan_model_placement(units, parse_max_memory({{"cuda:0", "2GB"}, {"cuda:1", "2GB"}}),
                                               {PlacementStrategy::Auto, activations, "unet"});
  expect_contiguous(plan.map, {"cuda:0", "cuda:1"});
  EXPECT_EQ(plan.map.at("down_blocks.0"), "cuda:0");
  EXPECT_EQ(plan.map.at("conv_out"), "cuda:1");
  std::cout << "[ plan ] SD 1.5 UNet (activations " << format_bytes(activations) << "): " << plan.map << "\n";
}

TEST(Planner, SequentialFillsGpu0First) {
  const auto& units = flux_dev().transformer;
  const DevicePlan plan = plan_model_placement(units, parse_max_memory({{"cuda:0", "16GB"}, {"cuda:1", "16GB"}}),
                                               {PlacementStrategy::Sequential, 0, "transformer"});
  expect_contiguous(plan.map, {"cuda:0", "cuda:1"});
  const uint64_t on0 = bytes_on(plan, "cuda:0");
  EXPECT_LE(on0, 16 * GB);
  EXPECT_GT(on0, 16 * GB - 700 * MB);  // full to within one block
  EXPECT_EQ(plan.map.at("single_transformer_blocks.0"), "cuda:0");
}

TEST(Planner, BalancedLow0LeavesGpu0AsEmptyAsItCan) {
  const auto& units = flux_dev().transformer;
  const MemoryBudget budget = parse_max_memory({{"cuda:0", "16GB"}, {"cuda:1", "16GB"}, {"cuda:2", "16GB"}});
  const DevicePlan low0 = plan_model_placement(units, budget, {PlacementStrategy::BalancedLow0, 0, "transformer"});
  const DevicePlan balanced = plan_model_placement(units, budget, {PlacementStrategy::Balanced, 0, "transformer"});
  EXPECT_EQ(bytes_on(low0, "cuda:0"), 0u);
  EXPECT_GT(bytes_on(low0, "cuda:1"), 7 * GB);
  EXPECT_GT(bytes_on(balanced, "cuda:0"), 7 * GB);
  EXPECT_LT(bytes_on(balanced, "cuda:0"), 9 * GB);
  EXPECT_FALSE(low0.notes.empty());  // "nothing placed on cuda:0"
  // With two GPUs, GPU 0 takes only what GPU 1 cannot (the rest of its share spills to the CPU).
  const DevicePlan tight = plan_model_placement(units, parse_max_memory({{"cuda:0", "16GB"}, {"cuda:1", "16GB"}, {"cpu", "64GB"}}),
                                                {PlacementStrategy::BalancedLow0, 0, "transformer"});
  EXPECT_LE(bytes_on(tight, "cuda:0"), sum_bytes(units) - 15 * GB);
}

TEST(Planner, BalancedBudgetIsAccelerates) {
  // Four units of 1 GB on three GPUs: per GPU 4/3 GB + 1.25 x 1 GB.
  const std::vector<PlacementUnit> units = {{"a", GB}, {"b", GB}, {"c", GB}, {"d", GB}};
  const MemoryBudget budget = parse_max_memory({{"cuda:0", "10GB"}, {"cuda:1", "10GB"}, {"cuda:2", "10GB"}, {"cpu", "5GB"}});
  const MemoryBudget balanced = balanced_budget(units, budget, false);
  EXPECT_EQ(balanced[0].second, 4 * GB / 3 + 1250 * MB);
  EXPECT_EQ(balanced[1].second, 4 * GB / 3 + 1250 * MB);
  EXPECT_EQ(balanced[2].second, 10 * GB);  // the last GPU keeps its budget
  EXPECT_EQ(balanced[3].second, 5 * GB);   // the CPU's is never touched
  const MemoryBudget low0 = balanced_budget(units, budget, true);
  EXPECT_EQ(low0[1].second, 2 * GB + 1250 * MB);
  EXPECT_EQ(low0[0].second, 0u);  // 4 GB - (3.25 + 10) GB < 0
  // One GPU: nothing to balance.
  EXPECT_EQ(balanced_budget(units, parse_max_memory({{"cuda:0", "3GB"}}), true)[0].second, 3 * GB);
}

TEST(Planner, OffloadsToCpuAndDiskKeepingRoomForWeightsThatMoveIn) {
  const auto& units = flux_dev().transformer;
  const uint64_t largest = units[3].bytes;  // a double block
  const MemoryBudget budget = parse_max_memory({{"cuda:0", "10GB"}, {"cpu", "8GB"}, {"disk", "100GB"}});
  const DevicePlan plan = plan_model_placement(units, budget, {PlacementStrategy::Auto, 400 * MB, "transformer"});
  expect_contiguous(plan.map, {"cuda:0", "cpu", "disk"});
  EXPECT_EQ(plan.map.at("time_text_embed"), "cuda:0");
  EXPECT_EQ(plan.map.at("proj_out"), "disk");
  // GPU 0 runs the offloaded units: it keeps room for the largest of them and for activations.
  EXPECT_LE(bytes_on(plan, "cuda:0") + largest + 400 * MB, 10 * GB);
  EXPECT_GT(bytes_on(plan, "cuda:0") + largest + 400 * MB + 700 * MB, 10 * GB);
  EXPECT_LE(bytes_on(plan, "cpu"), 8 * GB);
  EXPECT_GT(bytes_on(plan, "cpu"), 8 * GB - 700 * MB);
  EXPECT_EQ(bytes_on(plan, "cuda:0") + bytes_on(plan, "cpu") + bytes_on(plan, "disk"), sum_bytes(units));
}

TEST(Planner, WithoutAGpuTheCpuRunsUnitsAndKeepsRoomForDiskWeights) {
  const std::vector<PlacementUnit> units = {{"a", 300}, {"b", 300}, {"c", 500}, {"d", 300}};
  // The CPU keeps 500 (the largest unit still to come) for weights read from disk, and 100 for activations.
  const DevicePlan plan = plan_model_placement(units, parse_max_memory({{"cpu", "1000"}, {"disk", "10000"}}),
                                               {PlacementStrategy::Sequential, 100, "m"});
  EXPECT_EQ(plan.map, (DeviceMap{{"a", "cpu"}, {"b", "disk"}, {"c", "disk"}, {"d", "disk"}}));
  const DevicePlan roomier = plan_model_placement(units, parse_max_memory({{"cpu", "1300"}, {"disk", "10000"}}),
                                                  {PlacementStrategy::Sequential, 100, "m"});
  EXPECT_EQ(roomier.map, (DeviceMap{{"a", "cpu"}, {"b", "cpu"}, {"c", "disk"}, {"d", "disk"}}));
  // Only the CPU: nothing moves in, so nothing is kept but activations.
  const DevicePlan cpu_only = plan_model_placement(units, parse_max_memory({{"cpu", "1500"}}),
                                                   {PlacementStrategy::Auto, 100, "m"});
  EXPECT_EQ(cpu_only.map.devices(), std::vector<std::string>{"cpu"});
}

TEST(Planner, AGpuThatCannotHoldTheFirstUnitIsSkippedWithANote) {
  const std::vector<PlacementUnit> units = {{"a", 600}, {"b", 100}};
  const DevicePlan plan = plan_model_placement(units, parse_max_memory({{"cuda:0", "500"}, {"cuda:1", "1000"}}),
                                               {PlacementStrategy::Sequential, 0, "m"});
  EXPECT_EQ(plan.map, (DeviceMap{{"a", "cuda:1"}, {"b", "cuda:1"}}));
  ASSERT_EQ(plan.notes.size(), 1u);
  EXPECT_NE(plan.notes[0].find("nothing placed on cuda:0"), std::string::npos) << plan.notes[0];
}

TEST(Planner, AnImpossibleBudgetSaysHowMuchIsMissingAndWhere) {
  const auto& units = flux_dev().transformer;
  const std::string message = test::error_of([&] {
    plan_model_placement(units, parse_max_memory({{"cuda:0", "8GB"}, {"cuda:1", "8GB"}}),
                         {PlacementStrategy::Auto, 500 * MB, "transformer"});
  });
  std::cout << "[ error ] " << message << "\n";
  EXPECT_NE(message.find("transformer does not fit max_memory {cuda:0: 8.00 GB, cuda:1: 8.00 GB}"), std::string::npos);
  EXPECT_NE(message.find("more are needed for"), std::string::npos);
  EXPECT_NE(message.find("to proj_out"), std::string::npos);
  EXPECT_NE(message.find("500.00 MB are kept free for activations"), std::string::npos);
  EXPECT_NE(message.find("add \"cpu\" or \"disk\""), std::string::npos);
  // A block larger than every device is named as such.
  EXPECT_ERROR_CONTAINS(plan_model_placement(units, parse_max_memory({{"cuda:0", "600MB"}}), {}),
                        "transformer_blocks.0 alone is larger than the room left on any device");
  EXPECT_ERROR_CONTAINS(plan_model_placement(units, {}, {}), "max_memory is empty");
  EXPECT_ERROR_CONTAINS(parse_placement_strategy("fastest"), "\"balanced_low_0\"");
}

TEST(Planner, PipelineBalancedDealsComponentsOverTheGpusAsDiffusersDoes) {
  const FluxDevSizes& s = flux_dev();
  const std::vector<PlacementUnit> components = {{"text_encoder", sum_bytes(s.clip)},
                                                 {"text_encoder_2", sum_bytes(s.t5)},
                                                 {"transformer", sum_bytes(s.transformer)},
                                                 {"vae", sum_bytes(s.vae)}};
  const MemoryBudget two16 = parse_max_memory({{"cuda:0", "16GB"}, {"cuda:1", "16GB"}});
  // The guide's first stage: the text encoders alone.
  const DevicePlan encoders = plan_pipeline_balanced({components[0], components[1]}, two16);
  EXPECT_EQ(encoders.map, (DeviceMap{{"text_encoder", "cuda:1"}, {"text_encoder_2", "cuda:0"}}));
  EXPECT_TRUE(encoders.notes.empty());
  // Everything: the 23.8 GB transformer fits no 16 GB GPU and goes to the CPU, with a note.
  const DevicePlan all = plan_pipeline_balanced(components, two16);
  EXPECT_EQ(all.map, (DeviceMap{{"text_encoder", "cuda:1"}, {"text_encoder_2", "cuda:0"}, {"transformer", "cpu"},
                                {"vae", "cuda:1"}}));
  ASSERT_EQ(all.notes.size(), 1u);
  EXPECT_NE(all.notes[0].find("transformer (23.80 GB) fits on no GPU"), std::string::npos) << all.notes[0];
  // Two 40 GB GPUs hold it: transformer and VAE on one, the text encoders on the other.
  const DevicePlan big = plan_pipeline_balanced(components, parse_max_memory({{"cuda:0", "40GB"}, {"cuda:1", "40GB"}}));
  EXPECT_EQ(big.map, (DeviceMap{{"text_encoder", "cuda:1"}, {"text_encoder_2", "cuda:1"}, {"transformer", "cuda:0"},
                                {"vae", "cuda:0"}}));
  // The largest budget is dealt first; a GPU absent from max_memory gets nothing.
  const DevicePlan uneven = plan_pipeline_balanced(components, parse_max_memory({{"cuda:1", "80GB"}, {"cuda:3", "20GB"}}));
  EXPECT_EQ(uneven.map.at("transformer"), "cuda:1");
  EXPECT_EQ(uneven.map.at("text_encoder_2"), "cuda:3");
  for (const auto& device : uneven.map.devices()) EXPECT_TRUE(device == "cuda:1" || device == "cuda:3") << device;
  // A component that misses its turn's GPU takes the next one that holds it.
  const DevicePlan next = plan_pipeline_balanced({{"a", 10}, {"b", 9}, {"c", 8}},
                                                 parse_max_memory({{"cuda:0", "20"}, {"cuda:1", "10"}}));
  EXPECT_EQ(next.map, (DeviceMap{{"a", "cuda:0"}, {"b", "cuda:1"}, {"c", "cuda:0"}}));
  // No GPU at all: everything on the CPU, each with a note.
  const DevicePlan cpu = plan_pipeline_balanced(components, parse_max_memory({{"cpu", "64GB"}}));
  EXPECT_EQ(cpu.map.devices(), std::vector<std::string>{"cpu"});
  EXPECT_EQ(cpu.notes.size(), 4u);
}

// ---- units and maps of real models ----------------------------------------------------------------

TEST(ModelUnits, NamesFollowDiffusersAndExplicitMapsAreResolved) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::tiny_flux_pipeline();
  FluxTransformer2DModel transformer = load_flux_transformer(dir / "transformer", at::kFloat, c10::kCPU);
  const auto units = model_units(*transformer);
  std::vector<std::string> names;
  for (const auto& u : units) names.push_back(u.name);
  EXPECT_EQ(names, (std::vector<std::string>{"time_text_embed", "context_embedder", "x_embedder",
                                             "transformer_blocks.0", "transformer_blocks.1",
                                             "single_transformer_blocks.0", "single_transformer_blocks.1", "norm_out",
                                             "proj_out"}));
  uint64_t total = 0;
  for (const auto& u : units) total += u.bytes;
  EXPECT_EQ(total, module_bytes(*transformer));
  EXPECT_EQ(total, Checkpoint::open(dir / "transformer").total_bytes());
  EXPECT_EQ(checkpoint_bytes(Checkpoint::open(dir / "transformer"), at::kBFloat16), total / 2);

  const DeviceMap resolved =
      resolve_device_map({{"", "cpu"}, {"transformer_blocks", "disk"}, {"proj_out", "cuda:1"}}, units, "transformer");
  EXPECT_EQ(resolved.at("x_embedder"), "cpu");
  EXPECT_EQ(resolved.at("transformer_blocks.1"), "disk");
  EXPECT_EQ(resolved.at("single_transformer_blocks.0"), "cpu");
  EXPECT_EQ(resolved.at("proj_out"), "cuda:1");
  EXPECT_ERROR_CONTAINS(resolve_device_map({{"", "cpu"}, {"transformer_blocks.0.attn", "disk"}}, units, "transformer"),
                        "is inside unit 'transformer_blocks.0': units are placed whole");
  EXPECT_ERROR_CONTAINS(resolve_device_map({{"", "cpu"}, {"blocks", "disk"}}, units, "transformer"),
                        "'blocks' names no unit");
  EXPECT_ERROR_CONTAINS(resolve_device_map({{"transformer_blocks", "cpu"}}, units, "transformer"),
                        "leaves 7 units without a device: time_text_embed");

  ClipTextModel clip = load_clip_text_model(dir / "text_encoder", at::kFloat, c10::kCPU);
  EXPECT_EQ(model_units(*clip).front().name, "embeddings");
  EXPECT_EQ(model_units(*clip)[1].name, "encoder.layers.0");
  T5EncoderModel t5 = load_t5_encoder(dir / "text_encoder_2");
  EXPECT_EQ(model_units(*t5)[1].name, "encoder.block.0");
  AutoencoderKL vae = load_autoencoder_kl(dir / "vae");
  std::vector<std::string> vae_names;
  for (const auto& u : model_units(*vae)) vae_names.push_back(u.name);
  EXPECT_EQ(vae_names, (std::vector<std::string>{
                           "encoder.conv_in", "encoder.down_blocks.0", "encoder.down_blocks.1", "encoder.down_blocks.2",
                           "encoder.down_blocks.3", "encoder.mid_block", "encoder.conv_norm_out", "encoder.conv_out",
                           "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks.0", "decoder.up_blocks.1",
                           "decoder.up_blocks.2", "decoder.up_blocks.3", "decoder.conv_norm_out", "decoder.conv_out"}));
  EXPECT_ERROR_CONTAINS(model_units(*Linear(2, 2, true, at::TensorOptions())), "is not a model that diffuse can place");
}

// ---- applying maps on the CPU ---------------------------------------------------------------------

TEST(DeviceMapApplied, TransformerSplitBetweenCpuAndDiskGivesTheSameLatents) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::tiny_flux_pipeline() / "transformer";
  // Planned: 1 MB of CPU memory holds the first units, the rest is read from disk when it runs.
  FluxTransformer2DModel planned =
      load_flux_transformer(dir, {.device_map = "auto", .max_memory = {{"cpu", "1MB"}, {"disk", "1GB"}},
                                  .activation_memory = "0"});
  const DeviceMap map = planned->device_map();
  std::cout << "[ map ] " << map << "\n";
  EXPECT_EQ(map.size(), 9u);
  EXPECT_EQ(map.at("time_text_embed"), "cpu");
  EXPECT_EQ(map.at("proj_out"), "disk");
  EXPECT_EQ(map.devices(), (std::vector<std::string>{"cpu", "disk"}));
  EXPECT_EQ(execution_device(*planned), c10::Device(c10::kCPU));
  // Units on disk hold no memory until they run.
  EXPECT_EQ(planned->proj_out->weight.numel(), 0);

  FluxPipeline pipe = tiny_pipeline({.components = {{"transformer", planned}}});
  expect_same_output(pipe.generate(test::reference_request()), "cpu+disk (auto)");
  EXPECT_EQ(planned->proj_out->weight.numel(), 0);  // released after each run

  // An explicit map that alternates, so that activations cross at every block.
  FluxTransformer2DModel alternating = load_flux_transformer(
      dir, {.device_map = DeviceMap{{"", "disk"}, {"transformer_blocks.1", "cpu"}, {"single_transformer_blocks.0", "cpu"},
                                    {"x_embedder", "cpu"}}});
  FluxPipeline pipe2 = tiny_pipeline({.components = {{"transformer", alternating}}});
  expect_same_output(pipe2.generate(test::reference_request()), "alternating cpu/disk");

  // Hooks off: the disk units are read back and the model is whole again.
  remove_hooks(*alternating);
  EXPECT_TRUE(alternating->device_map().empty());
  EXPECT_GT(alternating->proj_out->weight.numel(), 0);
  FluxPipeline pipe3 = tiny_pipeline({.components = {{"transformer", alternating}}});
  expect_same_output(pipe3.generate(test::reference_request()), "hooks removed");
}

TEST(DeviceMapApplied, TransformerOverTheTestDevicesCpuAndDiskMatchesDiffusers) {
  DIFFUSE_REQUIRE_FIXTURES();
  // On the GPU machine: GPU units, "cpu" units copied in from pinned memory, "disk" units read to the
  // GPU, and with two GPUs activations that cross between them.
  const c10::Device device = test::test_device();
  const std::string main = device.str();
  const std::string second = device.is_cuda() && gpu_count() > 1 ? "cuda:1" : main;
  FluxTransformer2DModel transformer = load_flux_transformer(
      test::tiny_flux_pipeline() / "transformer",
      {.device_map = DeviceMap{{"", main}, {"transformer_blocks.0", "cpu"}, {"transformer_blocks.1", "disk"},
                               {"single_transformer_blocks", second}, {"norm_out", "cpu"}}});
  std::cout << "[ map ] " << transformer->device_map() << "\n";
  FluxPipeline pipe = tiny_pipeline({.device = main, .components = {{"transformer", transformer}}});
  EXPECT_EQ(pipe.execution_device("transformer"), device);
  const GenerateOutput out = pipe.generate(test::reference_request());
  const SafetensorsFile& reference = test::tiny_flux_reference();
  test::print_error("mapped transformer latents", out.latents, reference.load("latents_final"));
  EXPECT_TENSORS_CLOSE(out.latents, reference.load("latents_final"), 1e-4);
  EXPECT_TENSORS_CLOSE(out.image_tensor, reference.load("pipeline_output_pt"), 1e-4);
  EXPECT_EQ(transformer->transformer_blocks[1]->as<FluxTransformerBlockImpl>()->parameters().front().numel(), 0);
}

TEST(DeviceMapApplied, EveryModelRunsUnderHooks) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::tiny_flux_pipeline();
  // Every unit of every model read from disk when it runs, except one per model kept on the CPU.
  ComponentMap components;
  components.set("text_encoder", load_model<ClipTextModel>(
                                     dir / "text_encoder", {.device_map = DeviceMap{{"", "disk"}, {"encoder.layers.1", "cpu"}}}));
  const T5EncoderModel t5 =
      load_model<T5EncoderModel>(dir / "text_encoder_2", {.device_map = DeviceMap{{"", "disk"}, {"encoder.block.1", "cpu"}}});
  components.set("text_encoder_2", t5);
  components.set("transformer", load_model<FluxTransformer2DModel>(dir / "transformer", {.device_map = DeviceMap{{"", "disk"}}}));
  components.set("vae", load_model<AutoencoderKL>(dir / "vae", {.device_map = DeviceMap{{"", "disk"}, {"decoder.mid_block", "cpu"}}}));
  EXPECT_EQ(t5->device_map().at("shared"), "disk");
  FluxPipeline pipe = tiny_pipeline({.components = components});
  expect_same_output(pipe.generate(test::reference_request()), "all on disk");
  const SafetensorsFile& reference = test::tiny_flux_reference();
  PromptEmbeddings e = pipe.encode_prompt({.prompt = test::reference_request().prompt, .max_sequence_length = 32});
  EXPECT_TENSORS_CLOSE(e.prompt_embeds, reference.load("prompt_embeds"), 1e-4);
  EXPECT_TENSORS_CLOSE(e.pooled_prompt_embeds, reference.load("pooled_prompt_embeds"), 1e-4);
  EXPECT_TENSORS_CLOSE(pipe.vae()->encode_mean(reference.load("vae_encoder_input")),
                       reference.load("vae_encoder_latent_dist_mean"), 1e-4);
}

TEST(DeviceMapApplied, ModelAndSequentialOffloadGiveIdenticalOutputs) {
  DIFFUSE_REQUIRE_FIXTURES();
  const c10::Device device = test::test_device();
  {
    FluxPipeline pipe = tiny_pipeline();
    pipe.enable_model_cpu_offload(device.str());
    EXPECT_EQ(pipe.execution_device("transformer"), device);
    expect_same_output(pipe.generate(test::reference_request()), "model offload", device);
    // Between calls every component is back on the CPU.
    EXPECT_TRUE(pipe.transformer()->parameters().front().device().is_cpu());
    EXPECT_ERROR_CONTAINS(pipe.to("cpu"), "model CPU offload is enabled; call remove_all_hooks()");
    pipe.remove_all_hooks();
    pipe.to("cpu");
  }
  {
    FluxPipeline pipe = tiny_pipeline();
    pipe.enable_sequential_cpu_offload(device.str());
    EXPECT_EQ(pipe.transformer()->device_map().at("transformer_blocks.0"), "cpu");
    EXPECT_EQ(hooks_of(*pipe.transformer())->origin(), "sequential_offload");
    EXPECT_EQ(pipe.execution_device("vae"), device);
    expect_same_output(pipe.generate(test::reference_request()), "sequential offload", device);
    EXPECT_TRUE(pipe.transformer()->parameters().front().device().is_cpu());
    EXPECT_ERROR_CONTAINS(pipe.to("cpu"), "sequential CPU offload is enabled");
    // Switching from one offload to the other replaces it.
    pipe.enable_model_cpu_offload(device.str());
    EXPECT_EQ(hooks_of(*pipe.transformer()), nullptr);
    expect_same_output(pipe.generate(test::reference_request()), "model offload after sequential", device);
  }
}

TEST(DeviceMapApplied, ModelOffloadLeavesWeightsOnTheirHomeCopiesAfterEachCall) {
  DIFFUSE_REQUIRE_FIXTURES();
  const c10::Device device = test::test_device();
  // Without CUDA graphs: a capture stream's library workspaces would count as GPU memory kept.
  FluxPipeline pipe = tiny_pipeline({.cuda_graphs = false});
  pipe.enable_model_cpu_offload(device.str());
  const std::vector<std::pair<std::string, torch::nn::Module*>> models = {
      {"transformer", pipe.transformer().ptr().get()}, {"text_encoder", pipe.text_encoder().ptr().get()},
      {"text_encoder_2", pipe.text_encoder_2().ptr().get()}, {"vae", pipe.vae().ptr().get()}};
  uint64_t smallest = UINT64_MAX;
  for (const auto& [name, model] : models) {
    uint64_t bytes = 0;
    for (const at::Tensor& t : module_tensors(*model)) bytes += t.nbytes();
    smallest = std::min(smallest, bytes);
  }
  // The one-device run first: the GPU libraries' workspaces for this stream exist before `start`.
  unsplit_output(device);
  const uint64_t start = memory_allocated(device);
  for (int call = 0; call < 2; ++call) {
    const std::string what = "model offload, call " + std::to_string(call + 1);
    expect_same_output(pipe.generate(test::reference_request()), what.c_str(), device);
    // Every weight is back on its CPU home copy, pinned once at enable when the GPU runs the models.
    for (const auto& [name, model] : models)
      for (const at::Tensor& t : module_tensors(*model)) {
        ASSERT_TRUE(t.device().is_cpu()) << name << " after " << what;
        if (device.is_cuda()) ASSERT_TRUE(t.is_pinned()) << name << " after " << what;
      }
    // And no weights stay on the GPU: its allocated memory is back at the start value, within less
    // than the smallest model.
    const uint64_t after = memory_allocated(device);
    std::cout << "[ memory ] allocated on " << device << ": " << start << " B before, " << after << " B after "
              << what << "; smallest model " << smallest << " B\n";
    EXPECT_LT(after, start + smallest) << what;
  }
  // Ending the offload leaves the weights on the CPU, and the pipeline can move again.
  pipe.remove_all_hooks();
  EXPECT_TRUE(pipe.vae()->parameters().front().device().is_cpu());
  pipe.to(device.str());
  expect_same_output(pipe.generate(test::reference_request()), "moved after model offload", device);
}

TEST(DeviceMapApplied, PipelineBalancedMapsComponentsAndMustBeResetBeforeMoving) {
  DIFFUSE_REQUIRE_FIXTURES();
  // No GPU in max_memory: every component goes to the CPU (logged), and the pipeline is still "placed".
  FluxPipeline pipe = tiny_pipeline({.device_map = "balanced", .max_memory = {{"cpu", "1GB"}}});
  EXPECT_EQ(pipe.device_map(), (DeviceMap{{"text_encoder", "cpu"}, {"text_encoder_2", "cpu"}, {"transformer", "cpu"},
                                          {"vae", "cpu"}}));
  std::cout << "[ map ] " << pipe.device_map() << "\n";
  expect_same_output(pipe.generate(test::reference_request()), "balanced on cpu");
  EXPECT_ERROR_CONTAINS(pipe.to("cpu"), "placed by device_map \"balanced\" {\"text_encoder\": \"cpu\"");
  EXPECT_ERROR_CONTAINS(pipe.to("cpu"), "call reset_device_map() before moving it");
  EXPECT_ERROR_CONTAINS(pipe.enable_model_cpu_offload(), "enable_model_cpu_offload is not allowed on a pipeline placed");
  EXPECT_ERROR_CONTAINS(pipe.enable_sequential_cpu_offload(), "call reset_device_map() first");
  pipe.reset_device_map();
  EXPECT_TRUE(pipe.device_map().empty());
  pipe.to("cpu");
  expect_same_output(pipe.generate(test::reference_request()), "after reset");

  EXPECT_ERROR_CONTAINS(tiny_pipeline({.device_map = "auto"}), "device_map 'auto' is not supported for a pipeline");
  // Skipped components are not planned.
  FluxPipeline encoders = tiny_pipeline(
      {.skip = {"transformer", "vae"}, .device_map = "balanced", .max_memory = {{"cpu", "1GB"}}});
  EXPECT_EQ(encoders.device_map(), (DeviceMap{{"text_encoder", "cpu"}, {"text_encoder_2", "cpu"}}));
}

TEST(DeviceMapApplied, ErrorsNameWhatIsWrong) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path dir = test::tiny_flux_pipeline();
  // The tiny transformer (1.93 MB) in 1 MB with nowhere else to go.
  EXPECT_ERROR_CONTAINS(load_flux_transformer(dir / "transformer", {.device_map = "auto", .max_memory = {{"cpu", "1MB"}},
                                                                    .activation_memory = "0"}),
                        "transformer does not fit max_memory {cpu: 1.00 MB}");
  EXPECT_ERROR_CONTAINS(load_flux_transformer(dir / "transformer", {.device_map = "fastest"}),
                        "'fastest' is not a placement strategy");
  EXPECT_ERROR_CONTAINS(load_flux_transformer(dir / "transformer", {.device_map = DeviceMap{{"transformer_blocks.0.ff", "cpu"}}}),
                        "units are placed whole");
  EXPECT_ERROR_CONTAINS(load_flux_transformer(dir / "transformer", {.device_map = "auto", .max_memory = {{"cpu", "1MB"}},
                                                                    .activation_memory = "much"}),
                        "memory size 'much'");
  // "disk" needs the checkpoint the weights are read from.
  FluxTransformer2DModel loaded = load_flux_transformer(dir / "transformer", at::kFloat, c10::kCPU);
  EXPECT_ERROR_CONTAINS(dispatch_model(*loaded, {{"", "disk"}}), "needs the checkpoint they are read from");
  // A model placed by its own map cannot be moved or offloaded with the pipeline.
  FluxTransformer2DModel mapped = load_flux_transformer(dir / "transformer", {.device_map = DeviceMap{{"", "cpu"}}});
  FluxPipeline pipe = tiny_pipeline({.components = {{"transformer", mapped}}});
  EXPECT_ERROR_CONTAINS(pipe.to("cpu"), "component 'transformer' is placed by its own device map");
  EXPECT_ERROR_CONTAINS(pipe.enable_model_cpu_offload(), "'transformer' is placed by its own device map");
  pipe.remove_all_hooks();
  pipe.to("cpu");
}

TEST(DeviceMemory, DefaultsAndPeaks) {
  const MemoryBudget defaults = get_max_memory({});
  ASSERT_FALSE(defaults.empty());
  EXPECT_EQ(defaults.back().first, "cpu");
  EXPECT_GT(defaults.back().second, 0u);
  EXPECT_EQ(static_cast<int>(defaults.size()), gpu_count() + 1);
  EXPECT_EQ(peak_memory_allocated(c10::kCPU), 0u);
  EXPECT_ERROR_CONTAINS(available_memory("disk"), "give max_memory[\"disk\"]");
  EXPECT_ERROR_CONTAINS(available_memory("cuda:" + std::to_string(gpu_count())), "is not present");
}

// ---- the example program --------------------------------------------------------------------------

TEST(DeviceMapExample, ShowsEveryFeatureOnTheTinyPipeline) {
  DIFFUSE_REQUIRE_FIXTURES();
  const fs::path program = fs::path(DIFFUSE_EXAMPLES_BINARY_DIR) / "device_map";
  if (!fs::exists(program)) GTEST_SKIP() << program << " is not built (cmake --build build --target device_map)";
  const fs::path log = test::temporary_folder("device_map_example") / "output.txt";
  const std::string command = program.string() + " --model '" + test::tiny_flux_pipeline().string() +
                              "' --height 64 --width 96 > '" + log.string() + "' 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream in(log);
  const std::string output((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(status, 0) << output;
  for (const char* part : {"pipeline, device_map \"balanced\"", "transformer, device_map \"auto\"",
                           "transformer, device_map \"sequential\"", "does not fit max_memory",
                           "text encoders, device_map \"balanced\": {", "enable_sequential_cpu_offload",
                           "all outputs match"})
    EXPECT_NE(output.find(part), std::string::npos) << part << " missing from:\n" << output;
}
