// The safetensors reader, writer and sharded checkpoints: real files from the fixtures, bit-exact
// round trips, and every malformed-file case giving its own error.

#include <fstream>

#include "diffuse/error.hpp"
#include "diffuse/io/checkpoint.hpp"
#include "diffuse/io/safetensors.hpp"
#include "support/test_support.hpp"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

// Writes a file made of an 8-byte length, the header text and `data_bytes` zero bytes.
fs::path write_raw(const fs::path& path, const std::string& header, size_t data_bytes,
                   std::optional<uint64_t> declared_length = std::nullopt) {
  std::ofstream out(path, std::ios::binary);
  uint64_t length = declared_length.value_or(header.size());
  out.write(reinterpret_cast<const char*>(&length), 8);
  out << header;
  out << std::string(data_bytes, '\0');
  return path;
}

void expect_error_containing(const fs::path& path, const std::string& part) {
  try {
    SafetensorsFile file(path);
    FAIL() << "expected an error containing '" << part << "' for " << path;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path.filename().string()), std::string::npos)
        << "message should name the file: " << e.what();
  }
}

}  // namespace

TEST(Safetensors, ReadsEveryFixtureFileHeaderAndTensors) {
  DIFFUSE_REQUIRE_FIXTURES();
  size_t files = 0;
  for (const auto& entry : fs::recursive_directory_iterator(test::tiny_flux_pipeline())) {
    if (entry.path().extension() != ".safetensors") continue;
    ++files;
    SafetensorsFile file(entry.path());
    ASSERT_FALSE(file.tensors().empty()) << entry.path();
    for (const TensorInfo& info : file.tensors()) {
      EXPECT_EQ(info.dtype, "F32") << info.name;
      EXPECT_EQ(info.byte_size(), static_cast<uint64_t>(info.numel()) * 4) << info.name;
      at::Tensor t = file.load(info.name);
      EXPECT_EQ(t.sizes(), c10::IntArrayRef(info.shape)) << info.name;
      EXPECT_EQ(t.scalar_type(), at::kFloat);
      EXPECT_TRUE(at::isfinite(t).all().item<bool>()) << info.name;
    }
  }
  EXPECT_EQ(files, 4u);  // text_encoder, text_encoder_2, transformer, vae
}

TEST(Safetensors, KnowsTheTinyFluxTensorsByNameShapeAndDtype) {
  DIFFUSE_REQUIRE_FIXTURES();
  Checkpoint transformer = Checkpoint::open(test::tiny_flux_pipeline() / "transformer");
  EXPECT_EQ(transformer.info("x_embedder.weight").shape, (std::vector<int64_t>{64, 16}));
  EXPECT_EQ(transformer.info("single_transformer_blocks.1.proj_out.weight").shape, (std::vector<int64_t>{64, 320}));
  EXPECT_EQ(transformer.info("transformer_blocks.0.attn.norm_added_q.weight").dtype, "F32");
  Checkpoint t5 = Checkpoint::open(test::tiny_flux_pipeline() / "text_encoder_2" / "model.safetensors");
  EXPECT_EQ(t5.info("shared.weight").shape, (std::vector<int64_t>{1100, 32}));
  EXPECT_EQ(t5.total_bytes(), t5.files().front()->data_bytes());

  const SafetensorsFile& reference = test::tiny_flux_reference();
  EXPECT_EQ(reference.info("clip_input_ids").dtype, "I64");
  EXPECT_EQ(reference.info("image_uint8").dtype, "U8");
  EXPECT_EQ(reference.load("image_uint8").sizes(), (c10::IntArrayRef{1, 64, 96, 3}));
}

TEST(Safetensors, LoadsIntoARequestedDtype) {
  DIFFUSE_REQUIRE_FIXTURES();
  Checkpoint vae = Checkpoint::open(test::tiny_flux_pipeline() / "vae");
  at::Tensor f32 = vae.load("decoder.conv_in.weight");
  at::Tensor bf16 = vae.load("decoder.conv_in.weight", at::kBFloat16);
  EXPECT_EQ(bf16.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(bf16, f32.to(at::kBFloat16)));
}

TEST(Safetensors, WriterRoundTripsEveryDtypeBitExact) {
  fs::path dir = test::temporary_folder("safetensors_round_trip");
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f64", at::randn({3, 5}, at::kDouble)},
      {"f32", at::randn({2, 3, 4})},
      {"f16", at::randn({7}).to(at::kHalf)},
      {"bf16", at::randn({4, 4}).to(at::kBFloat16)},
      {"i64", at::arange(-5, 5, at::kLong)},
      {"i32", at::arange(0, 9, at::kInt).reshape({3, 3})},
      {"i16", at::arange(-3, 3, at::kShort)},
      {"i8", at::arange(-3, 3, at::kChar)},
      {"u8", at::arange(0, 255, at::kByte)},
      {"bool", at::rand({5}) > 0.5},
      {"scalar", at::scalar_tensor(3.5)},
      {"empty", at::empty({0, 4})},
      {"strided", at::randn({4, 6}).t()},
  };
  save_safetensors(dir / "all.safetensors", tensors, {{"format", "pt"}});
  SafetensorsFile file(dir / "all.safetensors");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  ASSERT_EQ(file.tensors().size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    at::Tensor actual = file.load(name);
    EXPECT_EQ(actual.scalar_type(), expected.scalar_type()) << name;
    EXPECT_EQ(actual.sizes(), expected.sizes()) << name;
    // Bit-exact: compare the raw bytes, so NaN payloads and -0.0 count too.
    at::Tensor a = actual.contiguous(), b = expected.contiguous();
    ASSERT_EQ(a.numel() * a.element_size(), b.numel() * b.element_size()) << name;
    // (An empty tensor may have no storage at all: memcmp must not see its null pointer.)
    if (a.numel() > 0) EXPECT_EQ(std::memcmp(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()), 0) << name;
  }
  // The data section starts 8-byte aligned.
  std::ifstream in(dir / "all.safetensors", std::ios::binary);
  uint64_t header_length = 0;
  in.read(reinterpret_cast<char*>(&header_length), 8);
  EXPECT_EQ(header_length % 8, 0u);
}

TEST(Safetensors, ViewsAliasTheMappedFileAndOutliveTheReader) {
  fs::path dir = test::temporary_folder("safetensors_view");
  at::Tensor expected = at::randn({16, 16});
  save_safetensors(dir / "one.safetensors", {{"w", expected}});
  at::Tensor view;
  {
    SafetensorsFile file(dir / "one.safetensors");
    view = file.view("w");
  }
  EXPECT_TRUE(at::equal(view, expected));
}

TEST(Safetensors, WriterLeavesNoPartialFileOnFailure) {
  fs::path dir = test::temporary_folder("safetensors_no_partial");
  EXPECT_THROW(save_safetensors(dir / "missing_folder" / "x.safetensors", {{"w", at::ones({2})}}), Error);
  // An undefined tensor fails before anything is written.
  EXPECT_THROW(save_safetensors(dir / "x.safetensors", {{"w", at::Tensor()}}), Error);
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(SafetensorsErrors, TruncatedFile) {
  fs::path dir = test::temporary_folder("safetensors_truncated");
  std::ofstream(dir / "short.safetensors", std::ios::binary) << "abc";
  expect_error_containing(dir / "short.safetensors", "truncated");
  // A valid file cut inside its data section.
  save_safetensors(dir / "whole.safetensors", {{"w", at::randn({64})}});
  fs::copy_file(dir / "whole.safetensors", dir / "cut.safetensors");
  fs::resize_file(dir / "cut.safetensors", fs::file_size(dir / "whole.safetensors") - 10);
  expect_error_containing(dir / "cut.safetensors", "past the data section");
}

TEST(SafetensorsErrors, HeaderLengthPastTheEnd) {
  fs::path dir = test::temporary_folder("safetensors_header_length");
  write_raw(dir / "long.safetensors", "{}", 0, 4096);
  expect_error_containing(dir / "long.safetensors", "runs past the end");
  write_raw(dir / "huge.safetensors", "{}", 0, uint64_t{1} << 40);
  expect_error_containing(dir / "huge.safetensors", "100 MB");
}

TEST(SafetensorsErrors, HeaderThatIsNotJson) {
  fs::path dir = test::temporary_folder("safetensors_not_json");
  write_raw(dir / "bad.safetensors", "{\"w\": [1, 2", 0);
  expect_error_containing(dir / "bad.safetensors", "not valid JSON");
  write_raw(dir / "array.safetensors", "[1, 2]", 0);
  expect_error_containing(dir / "array.safetensors", "not a JSON object");
}

TEST(SafetensorsErrors, OffsetsOutOfRangeOrOverlapping) {
  fs::path dir = test::temporary_folder("safetensors_offsets");
  write_raw(dir / "range.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  expect_error_containing(dir / "range.safetensors", "past the data section");
  write_raw(dir / "reversed.safetensors", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 16);
  expect_error_containing(dir / "reversed.safetensors", "is after end");
  write_raw(dir / "overlap.safetensors",
            R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
            24);
  expect_error_containing(dir / "overlap.safetensors", "overlapping");
}

TEST(SafetensorsErrors, UnknownDtype) {
  fs::path dir = test::temporary_folder("safetensors_dtype");
  write_raw(dir / "dtype.safetensors", R"({"w":{"dtype":"F48","shape":[1],"data_offsets":[0,6]}})", 6);
  expect_error_containing(dir / "dtype.safetensors", "unknown dtype 'F48'");
}

TEST(SafetensorsErrors, ShapeThatDoesNotMatchTheByteSize) {
  fs::path dir = test::temporary_folder("safetensors_shape");
  write_raw(dir / "shape.safetensors", R"({"w":{"dtype":"F32","shape":[3,3],"data_offsets":[0,32]}})", 32);
  expect_error_containing(dir / "shape.safetensors", "need 36 bytes but data_offsets span 32");
  write_raw(dir / "overflow.safetensors",
            R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4);
  expect_error_containing(dir / "overflow.safetensors", "too large");
}

TEST(SafetensorsErrors, MissingTensorNamesTheFileAndTensor) {
  fs::path dir = test::temporary_folder("safetensors_missing_tensor");
  save_safetensors(dir / "one.safetensors", {{"w", at::ones({2})}});
  SafetensorsFile file(dir / "one.safetensors");
  try {
    file.load("v");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor named 'v'"), std::string::npos) << e.what();
  }
}

TEST(ShardedCheckpoint, ReadsAnIndexAcrossShards) {
  fs::path dir = test::temporary_folder("sharded");
  at::Tensor a = at::randn({4, 4}), b = at::randn({8}), c = at::randn({2, 2}).to(at::kBFloat16);
  save_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", a}, {"b", b}});
  save_safetensors(dir / "model-00002-of-00002.safetensors", {{"c", c}});
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"metadata":{"total_size":100},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
      << R"("b":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}})";
  Checkpoint checkpoint = Checkpoint::open(dir);
  ASSERT_EQ(checkpoint.tensors().size(), 3u);
  EXPECT_EQ(checkpoint.files().size(), 2u);
  EXPECT_EQ(checkpoint.tensors()[2].name, "c");
  EXPECT_TRUE(at::equal(checkpoint.load("a"), a));
  EXPECT_TRUE(at::equal(checkpoint.load("c"), c));
  EXPECT_EQ(checkpoint.file_of("c").path().filename(), "model-00002-of-00002.safetensors");
  EXPECT_EQ(checkpoint.total_bytes(), 16u * 4 + 8 * 4 + 4 * 2);
}

TEST(ShardedCheckpoint, AShardNamedInTheIndexButMissing) {
  fs::path dir = test::temporary_folder("sharded_missing");
  save_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", at::ones({1})}});
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})";
  try {
    Checkpoint::open(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shard 'model-00002-of-00002.safetensors' named in the index is missing"),
              std::string::npos)
        << e.what();
  }
}

TEST(ShardedCheckpoint, ATensorMappedToTheWrongShard) {
  fs::path dir = test::temporary_folder("sharded_wrong_shard");
  save_safetensors(dir / "s1.safetensors", {{"a", at::ones({1})}});
  save_safetensors(dir / "s2.safetensors", {{"b", at::ones({1})}});
  std::ofstream(dir / "model.safetensors.index.json") << R"({"weight_map":{"a":"s2.safetensors","b":"s2.safetensors"}})";
  EXPECT_THROW(Checkpoint::open(dir), Error);
}

TEST(ShardedCheckpoint, AFolderWithNoWeightsOrSeveralCandidates) {
  fs::path dir = test::temporary_folder("sharded_folder");
  EXPECT_THROW(Checkpoint::open(dir), Error);
  save_safetensors(dir / "one.safetensors", {{"a", at::ones({1})}});
  save_safetensors(dir / "two.safetensors", {{"b", at::ones({1})}});
  try {
    Checkpoint::open(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("one.safetensors"), std::string::npos) << e.what();
  }
}

TEST(ShardedCheckpoint, SaveCheckpointWritesShardsAndAnIndexThatOpenReads) {
  fs::path dir = test::temporary_folder("save_checkpoint");
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"a", at::randn({64})}, {"b", at::randn({64})}, {"c", at::randn({32})}, {"d", at::randn({200})}};
  // 300 bytes a shard: a+b (512 B) cannot share one, so a | b | c | d.
  auto files = save_checkpoint(dir, "model", tensors, 300);
  ASSERT_EQ(files.size(), 5u);
  EXPECT_EQ(files[0].filename(), "model-00001-of-00004.safetensors");
  EXPECT_EQ(files.back().filename(), "model.safetensors.index.json");
  Checkpoint checkpoint = Checkpoint::open(dir);
  EXPECT_EQ(checkpoint.files().size(), 4u);
  for (const auto& [name, tensor] : tensors) EXPECT_TRUE(at::equal(checkpoint.load(name), tensor)) << name;

  fs::path single = test::temporary_folder("save_checkpoint_single");
  files = save_checkpoint(single, "diffusion_pytorch_model", tensors);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(Checkpoint::open(single).tensors().size(), 4u);
}
