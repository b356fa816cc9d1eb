// Links the installed diffuse and uses it: writes a safetensors file, reads it back.
#include <diffuse/diffuse.hpp>

#include <cstdio>
#include <filesystem>

int main() {
  const auto path = std::filesystem::temp_directory_path() / "diffuse_consumer.safetensors";
  at::Tensor weights = at::arange(6, at::kFloat).reshape({2, 3});
  diffuse::save_safetensors(path, {{"weights", weights}});
  diffuse::SafetensorsFile file(path);
  const bool same = at::equal(file.load("weights"), weights);
  std::filesystem::remove(path);
  std::printf("diffuse %s: round trip %s\n", DIFFUSE_VERSION_STRING, same ? "ok" : "MISMATCH");
  return same ? 0 : 1;
}
