#include "diffuse/models/weights.hpp"

#include <ATen/ATen.h>

#include <set>

#include "diffuse/error.hpp"

namespace diffuse {
namespace {

std::string shape_text(c10::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}


std::string join(const std::vector<std::string>& names, size_t limit = 20) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < limit; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > limit) out += ", ... (" + std::to_string(names.size() - limit) + " more)";
  return out;
}

// Every parameter and buffer of the module, by full name. The handles share their TensorImpl with the
// module's own, so set_data on them changes the module.
std::vector<std::pair<std::string, at::Tensor>> named_tensors(torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  std::function<void(torch::nn::Module&, const std::string&)> visit = [&](torch::nn::Module& m,
                                                                          const std::string& prefix) {
    for (auto& item : m.named_parameters(/*recurse=*/false)) out.emplace_back(prefix + item.key(), item.value());
    for (auto& item : m.named_buffers(/*recurse=*/false)) out.emplace_back(prefix + item.key(), item.value());
    for (auto& child : m.named_children()) visit(*child.value(), prefix + child.key() + ".");
  };
  visit(module, "");
  return out;
}

}  // namespace

bool keeps_float32(const std::string& name, const std::vector<std::string>& parts) {
  const std::string dotted = "." + name + ".";
  for (const auto& part : parts)
    if (dotted.find("." + part + ".") != std::string::npos) return true;
  return false;
}

bool has_ignored_prefix(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const auto& prefix : prefixes)
    if (name.rfind(prefix, 0) == 0) return true;
  return false;
}

void load_weights(torch::nn::Module& module, const Checkpoint& checkpoint, const WeightLoadOptions& options) {
  auto targets = named_tensors(module);
  std::vector<std::string> missing, mismatched, unexpected;
  std::set<std::string> consumed;
  for (auto& [name, tensor] : targets) {
    const TensorInfo* info = checkpoint.find(name);
    if (info == nullptr) {
      missing.push_back(name);
      continue;
    }
    consumed.insert(name);
    if (c10::IntArrayRef(info->shape) != tensor.sizes())
      mismatched.push_back(name + " (checkpoint " + shape_text(info->shape) + ", model " +
                           shape_text(tensor.sizes()) + ")");
  }
  for (const auto& info : checkpoint.tensors()) {
    if (consumed.count(info.name) || has_ignored_prefix(info.name, options.ignored_prefixes)) continue;
    auto alias = options.tied_aliases.find(info.name);
    if (alias != options.tied_aliases.end() && consumed.count(alias->second)) continue;
    unexpected.push_back(info.name);
  }
  if (!missing.empty() || !mismatched.empty() || !unexpected.empty()) {
    std::string message = checkpoint.source().string() + ": weights do not match the model";
    if (!missing.empty()) message += "; missing from the checkpoint: " + join(missing);
    if (!unexpected.empty()) message += "; not in the model: " + join(unexpected);
    if (!mismatched.empty()) message += "; shape mismatch: " + join(mismatched);
    throw Error(message);
  }

  at::NoGradGuard no_grad;
  for (auto& [name, tensor] : targets) {
    const std::optional<c10::Device> device = options.device_of ? options.device_of(name) : options.device;
    if (!device) continue;  // left on "disk": its hook reads it when its unit runs
    const TensorInfo& info = checkpoint.info(name);
    c10::ScalarType stored = safetensors_scalar_type(info.dtype);
    c10::ScalarType target = stored;
    if (c10::isFloatingType(stored))
      target = keeps_float32(name, options.keep_in_float32) ? c10::kFloat : options.dtype;
    // set_data swaps the storage in place: the module keeps its parameter objects, and the
    // placeholder allocation is released.
    tensor.set_data(checkpoint.load(name, target, *device));
  }
}

void convert_module(torch::nn::Module& module, c10::ScalarType dtype, c10::Device device,
                    const std::vector<std::string>& keep_in_float32) {
  at::NoGradGuard no_grad;
  for (auto& [name, tensor] : named_tensors(module)) {
    if (!tensor.defined()) continue;
    c10::ScalarType target = tensor.scalar_type();
    if (c10::isFloatingType(target)) target = keeps_float32(name, keep_in_float32) ? c10::kFloat : dtype;
    if (tensor.scalar_type() != target || tensor.device() != device)
      tensor.set_data(tensor.to(device, target));
  }
}

uint64_t module_bytes(const torch::nn::Module& module) {
  uint64_t total = 0;
  for (const auto& p : module.parameters()) total += p.numel() * p.element_size();
  for (const auto& b : module.buffers()) total += b.numel() * b.element_size();
  return total;
}

void check_block_counts(const std::vector<BlockCount>& counts, const Checkpoint& checkpoint,
                        const std::filesystem::path& config_file) {
  for (const BlockCount& block : counts) {
    int64_t held = 0;  // the highest block index with weights, plus one
    for (const TensorInfo& tensor : checkpoint.tensors()) {
      // The prefix starts the name or one of its components ("text_model.encoder.layers.3." and
      // "encoder.layers.3." both count: checkpoints are saved with and without the outer module).
      const std::string& name = tensor.name;
      size_t at = name.rfind(block.prefix, 0) == 0 ? 0 : name.find("." + block.prefix);
      if (at == std::string::npos) continue;
      if (at > 0) ++at;
      const size_t start = at + block.prefix.size(), end = name.find('.', start);
      if (end == std::string::npos || end == start || end - start > 9) continue;
      if (name.find_first_not_of("0123456789", start) != end) continue;
      held = std::max<int64_t>(held, std::stoll(name.substr(start, end - start)) + 1);
    }
    if (held != block.count)
      throw Error(config_file.string() + ": " + block.key + " is " + std::to_string(block.count) +
                  " but the weights hold " + std::to_string(held) + " blocks (" + block.prefix + "N)");
  }
}

}  // namespace diffuse
