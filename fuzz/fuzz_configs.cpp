// The JSON config readers: JsonConfig's typed getters, each configs.hpp struct read from the same
// text (each struct picks its own keys and ignores the rest), and ModelIndex from a file.
// Input: one JSON text.
//
// Promise under test: any text gives a config or a diffuse::Error naming the key; the values a config
// derives (inner_dim, vae_scale_factor) are defined for every config that from_json accepts.

#include "diffuse/io/configs.hpp"
#include "diffuse/schedulers/flow_match_euler_discrete.hpp"
#include "fuzz_support.hpp"

using namespace diffuse;

namespace {

// Every getter on every key: the wrong type is an error, never a crash.
void read_every_key(const JsonConfig& json, int depth) {
  for (const std::string& key : json.keys()) {
    FUZZ_CHECK(json.has(key) || json.dump(key) == "null", key);
    fuzz::expect_result_or_error("get_int", [&] { json.get_int(key, 0); });
    fuzz::expect_result_or_error("get_double", [&] { json.get_double(key, 0); });
    fuzz::expect_result_or_error("get_bool", [&] { json.get_bool(key, false); });
    fuzz::expect_result_or_error("get_string", [&] { json.get_string(key, ""); });
    fuzz::expect_result_or_error("get_optional_int", [&] { json.get_optional_int(key); });
    fuzz::expect_result_or_error("get_optional_double", [&] { json.get_optional_double(key); });
    fuzz::expect_result_or_error("get_int_list", [&] { json.get_int_list(key, {}); });
    fuzz::expect_result_or_error("get_string_list", [&] { json.get_string_list(key, {}); });
    fuzz::expect_result_or_error("get_object", [&] {
      if (auto nested = json.get_object(key); nested && depth < 4) read_every_key(*nested, depth + 1);
    });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fuzz::ScratchFolder scratch("fuzz_configs");
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  fuzz::expect_result_or_error("JsonConfig::parse", [&] {
    const JsonConfig json = JsonConfig::parse(text, "config.json");
    read_every_key(json, 0);
    fuzz::expect_result_or_error("ClipTextConfig", [&] { ClipTextConfig::from_json(json); });
    fuzz::expect_result_or_error("T5Config", [&] { T5Config::from_json(json); });
    fuzz::expect_result_or_error("FluxTransformerConfig", [&] { FluxTransformerConfig::from_json(json).inner_dim(); });
    fuzz::expect_result_or_error("AutoencoderKLConfig", [&] { AutoencoderKLConfig::from_json(json).vae_scale_factor(); });
    fuzz::expect_result_or_error("FlowMatchEulerDiscreteSchedulerConfig",
                                 [&] { FlowMatchEulerDiscreteSchedulerConfig::from_json(json); });
  });

  // The file readers: JsonConfig::load, and ModelIndex, which has no in-memory entry point.
  const auto file = scratch.write("config.json", text);
  fuzz::expect_result_or_error("ModelIndex::from_file", [&] {
    const ModelIndex index = ModelIndex::from_file(file);
    FUZZ_CHECK(!index.class_name.empty(), "accepted without _class_name");
    for (const auto& [name, component] : index.components) FUZZ_CHECK(!name.empty() && name[0] != '_', name);
  });
  fuzz::expect_result_or_error("ClipTextConfig::from_file", [&] { ClipTextConfig::from_file(file); });
  return 0;
}
