#pragma once
// Internal: what the communicator engines (gloo_communicator.cpp, nccl_communicator.cpp) share.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/distributed/communicator.hpp"
#include "distributed/membership.hpp"

namespace diffuse::distributed_detail {

// One communicator to make: its members and where its tensors live.
struct GroupSpec {
  std::shared_ptr<Membership> membership;
  std::string name;               // "world", "world/split0.color1": unique, also its store prefix
  int rank = 0;                   // this process among the members
  std::vector<int> global_ranks;  // the members' world ranks
  c10::Device device = c10::kCPU;
  std::string master_addr;        // for Gloo's choice of network interface
};

std::shared_ptr<Communicator> make_gloo_communicator(const GroupSpec& spec);
#if DIFFUSE_HAS_NCCL
std::shared_ptr<Communicator> make_nccl_communicator(const GroupSpec& spec);
#endif

// Communicator::split's bookkeeping, the same for every engine: each member publishes its (color,
// key) and reads the others'. `member` is false for a negative color.
struct SplitPlan {
  bool member = false;
  GroupSpec spec;
};
SplitPlan plan_split(const GroupSpec& parent, uint64_t split_number, int color, int key);

// Checks with messages naming the operation: contiguous, dense, and (for NCCL) on `device`.
void check_tensor(const at::Tensor& tensor, const std::string& what, const char* role);
// A contiguous tensor's bytes as a flat uint8 tensor (communication moves bytes, whatever the dtype).
at::Tensor flat_bytes(const at::Tensor& tensor);
// Bytes in one row (dim 0) of a tensor.
int64_t row_bytes(const at::Tensor& tensor);
// Splits in rows -> splits in bytes; empty -> equal parts of dim 0 (checked).
std::vector<int64_t> byte_splits(const at::Tensor& tensor, const std::vector<int64_t>& splits, int parts,
                                 const std::string& what, const char* role);

}  // namespace diffuse::distributed_detail
