#include "diffuse/distributed/communicator.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <sstream>
#include <tuple>

#include "diffuse/error.hpp"
#include "distributed/backends.hpp"

namespace diffuse {

void Work::wait() {
  if (impl_) impl_->wait();
}

bool Work::completed() const { return !impl_ || impl_->completed(); }

namespace {

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* what) {
  const int64_t wrapped = dim < 0 ? dim + ndim : dim;
  if (wrapped < 0 || wrapped >= ndim)
    throw Error(std::string(what) + ": dim " + std::to_string(dim) + " out of range for a tensor of " +
                std::to_string(ndim) + " dims");
  return wrapped;
}

std::string list(const std::vector<int64_t>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + "]";
}

}  // namespace

at::Tensor Communicator::all_gather(const at::Tensor& input, int64_t dim) {
  const at::Tensor x = (input.dim() == 0 ? input.reshape({1}) : input).contiguous();
  const int64_t d = wrap_dim(dim, x.dim(), "all_gather");
  std::vector<int64_t> shape = {size()};
  for (int64_t s : x.sizes()) shape.push_back(s);
  at::Tensor buffer = at::empty(shape, x.options());
  all_gather_into(buffer, x).wait();
  // [P, ..., n_d, ...] -> [..., P * n_d, ...]: member p's slice lands at p * n_d.
  return buffer.movedim(0, d).flatten(d, d + 1).contiguous();
}

at::Tensor Communicator::all_gather(const at::Tensor& input, int64_t dim, const std::vector<int64_t>& sizes) {
  const int64_t d = wrap_dim(dim, input.dim(), "all_gather");
  if (static_cast<int>(sizes.size()) != size())
    throw Error("all_gather on " + name() + ": " + std::to_string(sizes.size()) + " sizes for " +
                std::to_string(size()) + " members");
  if (input.size(d) != sizes[static_cast<size_t>(rank())])
    throw Error("all_gather on " + name() + ": this member's size along dim " + std::to_string(d) + " is " +
                std::to_string(input.size(d)) + ", but sizes " + list(sizes) + " say " +
                std::to_string(sizes[static_cast<size_t>(rank())]));
  const int64_t longest = *std::max_element(sizes.begin(), sizes.end());
  if (std::all_of(sizes.begin(), sizes.end(), [&](int64_t s) { return s == longest; })) return all_gather(input, d);
  // Pad every part to the longest (the pieces differ by a token or so), gather, then cut.
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape[static_cast<size_t>(d)] = longest;
  at::Tensor padded = at::zeros(shape, input.options());
  padded.narrow(d, 0, input.size(d)).copy_(input);
  const at::Tensor gathered = all_gather(padded, d);
  std::vector<at::Tensor> pieces;
  for (int i = 0; i < size(); ++i) pieces.push_back(gathered.narrow(d, i * longest, sizes[static_cast<size_t>(i)]));
  return at::cat(pieces, d);
}

at::Tensor Communicator::all_to_all(const at::Tensor& input, int64_t scatter_dim, int64_t gather_dim) {
  const int64_t s = wrap_dim(scatter_dim, input.dim(), "all_to_all");
  if (input.size(s) % size() != 0)
    throw Error("all_to_all on " + name() + ": size " + std::to_string(input.size(s)) + " of scatter dim " +
                std::to_string(s) + " is not a multiple of the " + std::to_string(size()) +
                " members (pass scatter_sizes for uneven parts)");
  const int64_t g = wrap_dim(gather_dim, input.dim(), "all_to_all");
  return all_to_all(input, s, g, std::vector<int64_t>(static_cast<size_t>(size()), input.size(s) / size()),
                    std::vector<int64_t>(static_cast<size_t>(size()), input.size(g)));
}

at::Tensor Communicator::all_to_all(const at::Tensor& input, int64_t scatter_dim, int64_t gather_dim,
                                    const std::vector<int64_t>& scatter_sizes,
                                    const std::vector<int64_t>& gather_sizes) {
  const int64_t s = wrap_dim(scatter_dim, input.dim(), "all_to_all");
  const int64_t g = wrap_dim(gather_dim, input.dim(), "all_to_all");
  const std::string what = "all_to_all on " + name();
  if (s == g) throw Error(what + ": scatter and gather dims are both " + std::to_string(s));
  const auto members = static_cast<size_t>(size());
  if (scatter_sizes.size() != members || gather_sizes.size() != members)
    throw Error(what + ": expected " + std::to_string(members) + " scatter and gather sizes, got " +
                list(scatter_sizes) + " and " + list(gather_sizes));
  if (std::accumulate(scatter_sizes.begin(), scatter_sizes.end(), int64_t{0}) != input.size(s))
    throw Error(what + ": scatter sizes " + list(scatter_sizes) + " do not add up to dim " + std::to_string(s) +
                "'s size " + std::to_string(input.size(s)));
  if (gather_sizes[static_cast<size_t>(rank())] != input.size(g))
    throw Error(what + ": this member's size along gather dim " + std::to_string(g) + " is " +
                std::to_string(input.size(g)) + ", but gather sizes " + list(gather_sizes) + " say " +
                std::to_string(gather_sizes[static_cast<size_t>(rank())]));

  // Send: part j (scatter_sizes[j] along s), flattened, for member j.
  const std::vector<at::Tensor> parts = input.split_with_sizes(scatter_sizes, s);
  std::vector<at::Tensor> flat;
  std::vector<int64_t> input_splits;
  for (const at::Tensor& part : parts) {
    flat.push_back(part.contiguous().reshape({-1}));
    input_splits.push_back(part.numel());
  }
  const at::Tensor send = at::cat(flat);
  // Receive: from member i, its part for us, shaped like its input with our share of s.
  std::vector<std::vector<int64_t>> shapes;
  std::vector<int64_t> output_splits;
  for (size_t i = 0; i < members; ++i) {
    std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
    shape[static_cast<size_t>(s)] = scatter_sizes[static_cast<size_t>(rank())];
    shape[static_cast<size_t>(g)] = gather_sizes[i];
    output_splits.push_back(std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>()));
    shapes.push_back(shape);
  }
  at::Tensor received = at::empty({std::accumulate(output_splits.begin(), output_splits.end(), int64_t{0})},
                                  input.options());
  all_to_all_into(received, send, output_splits, input_splits).wait();
  std::vector<at::Tensor> pieces;
  const std::vector<at::Tensor> chunks = received.split_with_sizes(output_splits);
  for (size_t i = 0; i < members; ++i) pieces.push_back(chunks[i].view(shapes[i]));
  return at::cat(pieces, g);
}

at::Tensor Communicator::broadcast(const at::Tensor& tensor, int root) {
  at::Tensor out = tensor.contiguous().clone();
  broadcast_into(out, root).wait();
  return out;
}

namespace distributed_detail {

SplitPlan plan_split(const GroupSpec& parent, uint64_t split_number, int color, int key) {
  const std::string prefix = parent.name + "/split" + std::to_string(split_number);
  parent.membership->arrive_and_wait(prefix, parent.global_ranks,
                                     "split #" + std::to_string(split_number) + " of communicator " + parent.name,
                                     std::to_string(color) + " " + std::to_string(key));
  SplitPlan plan;
  plan.member = color >= 0;
  if (!plan.member) return plan;
  std::vector<std::tuple<int, int, int>> same;  // (key, parent rank, world rank)
  for (size_t i = 0; i < parent.global_ranks.size(); ++i) {
    const int global = parent.global_ranks[i];
    const auto value = parent.membership->try_get(prefix + "/" + std::to_string(global));
    if (!value) throw Error("split of " + parent.name + ": rank " + std::to_string(global) + "'s color vanished");
    std::istringstream in(*value);
    int their_color = -1, their_key = 0;
    in >> their_color >> their_key;
    if (their_color == color) same.emplace_back(their_key, static_cast<int>(i), global);
  }
  std::sort(same.begin(), same.end());
  plan.spec = parent;
  plan.spec.name = prefix + ".color" + std::to_string(color);
  plan.spec.global_ranks.clear();
  for (size_t i = 0; i < same.size(); ++i) {
    if (std::get<1>(same[i]) == parent.rank) plan.spec.rank = static_cast<int>(i);
    plan.spec.global_ranks.push_back(std::get<2>(same[i]));
  }
  return plan;
}

void check_tensor(const at::Tensor& tensor, const std::string& what, const char* role) {
  if (!tensor.defined()) throw Error(what + ": the " + role + " tensor is undefined");
  if (tensor.layout() != at::kStrided) throw Error(what + ": the " + role + " tensor is not dense");
  if (!tensor.is_contiguous()) throw Error(what + ": the " + role + " tensor is not contiguous");
}

at::Tensor flat_bytes(const at::Tensor& tensor) { return tensor.reshape({-1}).view(at::kByte); }

int64_t row_bytes(const at::Tensor& tensor) {
  int64_t n = static_cast<int64_t>(tensor.element_size());
  for (int64_t d = 1; d < tensor.dim(); ++d) n *= tensor.size(d);
  return n;
}

std::vector<int64_t> byte_splits(const at::Tensor& tensor, const std::vector<int64_t>& splits, int parts,
                                 const std::string& what, const char* role) {
  const int64_t rows = tensor.dim() == 0 ? 1 : tensor.size(0);
  std::vector<int64_t> out;
  if (splits.empty()) {
    if (rows % parts != 0)
      throw Error(what + ": the " + role + " tensor's " + std::to_string(rows) + " rows do not split evenly into " +
                  std::to_string(parts) + " parts");
    out.assign(static_cast<size_t>(parts), rows / parts * row_bytes(tensor));
    return out;
  }
  if (static_cast<int>(splits.size()) != parts)
    throw Error(what + ": " + std::to_string(splits.size()) + " " + role + " splits for " + std::to_string(parts) +
                " members");
  int64_t total = 0;
  for (int64_t split : splits) {
    if (split < 0) throw Error(what + ": negative " + role + " split " + list(splits));
    total += split;
    out.push_back(split * row_bytes(tensor));
  }
  if (total != rows)
    throw Error(what + ": " + role + " splits " + list(splits) + " add up to " + std::to_string(total) + ", not the " +
                std::to_string(rows) + " rows of the " + role + " tensor");
  return out;
}

}  // namespace distributed_detail
}  // namespace diffuse
