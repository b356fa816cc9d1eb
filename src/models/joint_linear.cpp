#include "models/joint_linear.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

namespace diffuse {
namespace {

// Whether `tensors` are contiguous views of one storage, each starting where the previous one ends.
bool end_to_end(const std::vector<at::Tensor>& tensors) {
  const at::Tensor& first = tensors.front();
  if (!first.defined() || !first.has_storage() || !first.is_contiguous()) return false;
  int64_t next = first.storage_offset() + first.numel();
  for (size_t i = 1; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    if (!t.defined() || !t.has_storage() || !t.is_contiguous() || t.scalar_type() != first.scalar_type() ||
        t.storage().unsafeGetStorageImpl() != first.storage().unsafeGetStorageImpl() || t.storage_offset() != next)
      return false;
    next += t.numel();
  }
  return true;
}

// The view of `first`'s storage covering `rows` rows of first's row length (or `rows` values of a vector).
at::Tensor span_from(const at::Tensor& first, int64_t rows) {
  if (first.dim() == 1) return first.as_strided({rows}, {1}, first.storage_offset());
  return first.as_strided({rows, first.size(1)}, {first.size(1), 1}, first.storage_offset());
}

}  // namespace

std::optional<JointLinear> joint_linear(const std::vector<const LinearImpl*>& layers) {
  if (layers.size() < 2) return std::nullopt;
  std::vector<at::Tensor> weights, biases;
  int64_t rows = 0;
  for (const LinearImpl* layer : layers) {
    if (!layer->weight.defined() || layer->weight.dim() != 2 || layer->weight.size(1) != layers.front()->weight.size(1) ||
        layer->bias.defined() != layers.front()->bias.defined())
      return std::nullopt;
    weights.push_back(layer->weight);
    biases.push_back(layer->bias);
    rows += layer->weight.size(0);
  }
  if (!end_to_end(weights)) return std::nullopt;
  JointLinear joint{span_from(weights.front(), rows), at::Tensor()};
  if (biases.front().defined()) {
    if (!end_to_end(biases) || biases.front().device() != weights.front().device()) return std::nullopt;
    joint.bias = span_from(biases.front(), rows);
  }
  return joint;
}

bool fuse_linears(const std::vector<LinearImpl*>& layers) {
  if (layers.size() < 2) return false;
  const LinearImpl& first = *layers.front();
  if (!first.weight.defined()) return false;
  auto same_kind = [&](const at::Tensor& t) {
    return t.scalar_type() == first.weight.scalar_type() && t.device() == first.weight.device() && !t.is_sparse();
  };
  for (const LinearImpl* layer : layers) {
    const at::Tensor& w = layer->weight;
    if (!w.defined() || w.dim() != 2 || w.size(1) != first.weight.size(1) || !same_kind(w) ||
        layer->bias.defined() != first.bias.defined() ||
        (layer->bias.defined() && (!same_kind(layer->bias) || layer->bias.dim() != 1)))
      return false;
  }
  if (joint_linear(std::vector<const LinearImpl*>(layers.begin(), layers.end()))) return true;
  const c10::NoGradGuard no_grad;
  auto relay = [&](at::Tensor LinearImpl::*member) {
    std::vector<at::Tensor> parts;
    for (LinearImpl* layer : layers) parts.push_back(layer->*member);
    const at::Tensor joint = at::cat(parts, 0);  // a new contiguous storage
    int64_t offset = 0;
    for (LinearImpl* layer : layers) {
      at::Tensor& parameter = layer->*member;
      const int64_t rows = parameter.size(0);
      // set_data keeps the parameter object (and so the module's registration of it) and swaps what
      // it views; the old storage is freed once nothing else holds it.
      parameter.set_data(joint.narrow(0, offset, rows));
      offset += rows;
    }
  };
  relay(&LinearImpl::weight);
  if (first.bias.defined()) relay(&LinearImpl::bias);
  return true;
}

std::vector<at::Tensor> joint_linear_forward(const std::vector<LinearImpl*>& layers, const at::Tensor& x) {
  std::vector<at::Tensor> out;
  const std::optional<JointLinear> joint =
      joint_linear(std::vector<const LinearImpl*>(layers.begin(), layers.end()));
  if (!joint) {
    for (LinearImpl* layer : layers) out.push_back(layer->forward(x));
    return out;
  }
  const at::Tensor all = at::linear(x, joint->weight, joint->bias);
  int64_t offset = 0;
  for (LinearImpl* layer : layers) {
    const int64_t rows = layer->weight.size(0);
    out.push_back(all.narrow(-1, offset, rows));
    offset += rows;
  }
  return out;
}

}  // namespace diffuse
