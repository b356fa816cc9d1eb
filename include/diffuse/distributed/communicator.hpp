#pragma once
// One interface over the communication engines: NCCL for CUDA tensors, Gloo (c10d) for CPU tensors.
//
// Every member of a communicator calls the same collectives in the same order. Data moves as raw
// bytes, so any dtype works (no reductions here). Tensors live on device(); a Gloo communicator also
// takes tensors elsewhere and stages them through the CPU.
//
// Asynchrony: the primitives return a Work at once. On NCCL they run on the communicator's own
// stream, after the work already queued on the caller's current stream (an event orders them), and
// Work::wait() makes the caller's current stream wait for them without blocking the host. On Gloo
// they run on c10d's threads and wait() blocks until done. The convenience calls (all_gather,
// all_to_all, broadcast) wait for you.
//
// Failure: a member that exits, dies or never arrives makes the others fail within the timeout with
// a diffuse::Error naming that rank (and the operation), never a hang. After a failure the
// communicator is aborted and every later call throws the same error.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <string>
#include <vector>

namespace diffuse {

// A communication in flight.
class Work {
 public:
  class Impl {
   public:
    virtual ~Impl() = default;
    virtual void wait() = 0;
    virtual bool completed() = 0;
  };

  Work() = default;  // nothing to wait for
  explicit Work(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

  // Gloo: blocks until done. NCCL: orders the caller's current CUDA stream after the operation.
  // Throws diffuse::Error when the operation failed (naming the rank at fault).
  void wait();
  // True once the data has arrived (on NCCL: the operation finished on the device).
  bool completed() const;

 private:
  std::shared_ptr<Impl> impl_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  // "nccl" or "gloo".
  virtual std::string backend() const = 0;
  // This process's index among the members, and their count.
  int rank() const { return rank_; }
  int size() const { return static_cast<int>(global_ranks_.size()); }
  // The world rank of each member, in member order.
  const std::vector<int>& global_ranks() const { return global_ranks_; }
  // Where its tensors live (cuda:LOCAL_RANK for NCCL, the CPU for Gloo).
  c10::Device device() const { return device_; }
  // A name for messages: "world", or the parent's name and the split ("world/split0.color1").
  const std::string& name() const { return name_; }

  // ---- primitives: contiguous tensors of one dtype; they return at once --------------------------
  // output (size() * input.numel() elements) <- member 0's input, then member 1's, ...
  virtual Work all_gather_into(const at::Tensor& output, const at::Tensor& input) = 0;
  // Rows (dim 0) of input go to the members in order, input_splits[j] rows to member j; output
  // receives output_splits[i] rows from member i, in order. Empty splits mean equal parts. Rows of
  // input and output must have the same number of bytes.
  virtual Work all_to_all_into(const at::Tensor& output, const at::Tensor& input,
                               const std::vector<int64_t>& output_splits,
                               const std::vector<int64_t>& input_splits) = 0;
  // tensor <- root's tensor, on every member.
  virtual Work broadcast_into(const at::Tensor& tensor, int root) = 0;
  // Point to point; each send is matched by the peer's recv in order (per pair of members).
  virtual Work send(const at::Tensor& tensor, int dst) = 0;
  virtual Work recv(const at::Tensor& tensor, int src) = 0;
  // One step of a ring: sends `send_tensor` to dst while receiving `recv_tensor` from src, both
  // in flight together (so that every member doing it at once cannot deadlock).
  virtual Work send_recv(const at::Tensor& send_tensor, int dst, const at::Tensor& recv_tensor, int src) = 0;
  // Returns (host side) once every member has called it; names the ranks that did not.
  virtual void barrier() = 0;
  // Collective over the members: those passing the same color form a new communicator, ordered by
  // (key, rank). A negative color takes no part and gets nullptr. Used for 2D meshes (rows/columns).
  virtual std::shared_ptr<Communicator> split(int color, int key) = 0;

  // ---- conveniences (they wait) -----------------------------------------------------------------
  // Concatenation of every member's input along dim (equal shapes).
  at::Tensor all_gather(const at::Tensor& input, int64_t dim = 0);
  // The same with uneven sizes along dim: sizes[i] is member i's (other dims equal).
  at::Tensor all_gather(const at::Tensor& input, int64_t dim, const std::vector<int64_t>& sizes);
  // Splits input along scatter_dim into size() equal parts, sends part j to member j, and
  // concatenates the parts received along gather_dim (Ulysses' heads <-> sequence exchange).
  at::Tensor all_to_all(const at::Tensor& input, int64_t scatter_dim, int64_t gather_dim);
  // Uneven: scatter_sizes[j] is the share of scatter_dim that member j gets; gather_sizes[i] is
  // member i's size along gather_dim (input.size(gather_dim) == gather_sizes[rank()]).
  at::Tensor all_to_all(const at::Tensor& input, int64_t scatter_dim, int64_t gather_dim,
                        const std::vector<int64_t>& scatter_sizes, const std::vector<int64_t>& gather_sizes);
  // root's tensor on every member (a new tensor; shapes and dtypes must agree).
  at::Tensor broadcast(const at::Tensor& tensor, int root);

 protected:
  Communicator(std::string name, int rank, std::vector<int> global_ranks, c10::Device device)
      : name_(std::move(name)), rank_(rank), global_ranks_(std::move(global_ranks)), device_(device) {}

 private:
  std::string name_;
  int rank_ = 0;
  std::vector<int> global_ranks_;
  c10::Device device_;
};

}  // namespace diffuse
