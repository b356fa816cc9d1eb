// One rank of a multi-process test (tests/test_distributed.cpp starts several, with torchrun's
// variables set). Each scenario checks its own results against values computed locally and exits
//   0  all checks passed
//   1  a check failed (the line says which)
//   3  a diffuse::Error was thrown (its message is printed after "error: ")
// Device: $DIFFUSE_TEST_DEVICE=cuda puts every rank on cuda:LOCAL_RANK (NCCL); else the CPU (Gloo).
//
//   helper_distributed collectives
//   helper_distributed split_and_gather
//   helper_distributed leave RANK return|kill|hang   (RANK leaves after one collective)
//   helper_distributed init_only

#include <ATen/ATen.h>
#include <csignal>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "diffuse/distributed/distributed.hpp"
#include "diffuse/error.hpp"

using namespace diffuse;

namespace {

int failures = 0;
int checks = 0;

void check(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::cout << "FAIL " << what << std::endl;
  }
}

void check_equal(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
  const at::Tensor a = actual.cpu(), e = expected.cpu();
  const bool ok = a.sizes() == e.sizes() && a.scalar_type() == e.scalar_type() && a.equal(e);
  check(ok, what);
  if (!ok) std::cout << "  actual " << a.sizes() << " " << a.flatten().slice(0, 0, 12) << "\n  expected " << e.sizes()
                     << " " << e.flatten().slice(0, 0, 12) << std::endl;
}

DistributedOptions options_from_environment() {
  DistributedOptions options;
  const char* device = std::getenv("DIFFUSE_TEST_DEVICE");
  options.device = device != nullptr && std::string(device).rfind("cuda", 0) == 0 ? "cuda" : "cpu";
  return options;
}

// Member `src`'s tensor for the all-to-all checks: values encode (src, position), so that any
// misplaced element shows.
at::Tensor pattern(int src, std::vector<int64_t> shape, at::ScalarType dtype = at::kFloat) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return (at::arange(n, at::kLong) + 100000 * src).view(shape).to(dtype);
}

void collectives_on(Communicator& comm, const std::string& tag) {
  const int r = comm.rank(), P = comm.size();
  const c10::Device dev = comm.device();
  auto on = [&](const at::Tensor& t) { return t.to(dev); };

  // all_gather, equal shapes, along dims 0 and 1, in several dtypes.
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kLong}) {
    std::vector<at::Tensor> parts;
    for (int i = 0; i < P; ++i) parts.push_back(pattern(i, {2, 3}, dtype));
    check_equal(comm.all_gather(on(pattern(r, {2, 3}, dtype)), 0), at::cat(parts, 0),
                tag + " all_gather dim 0 " + c10::toString(dtype));
    check_equal(comm.all_gather(on(pattern(r, {2, 3}, dtype)), 1), at::cat(parts, 1),
                tag + " all_gather dim 1 " + c10::toString(dtype));
  }
  // all_gather, uneven along dim 1 (member i has i + 1 columns; member 0's minimum is 1).
  {
    std::vector<int64_t> sizes;
    std::vector<at::Tensor> parts;
    for (int i = 0; i < P; ++i) {
      sizes.push_back(i + 1);
      parts.push_back(pattern(i, {2, i + 1}));
    }
    check_equal(comm.all_gather(on(pattern(r, {2, r + 1})), 1, sizes), at::cat(parts, 1), tag + " all_gather uneven");
  }
  // all_to_all, equal parts: scatter rows, gather along dim 1 (Ulysses' shape change).
  {
    std::vector<at::Tensor> parts;
    for (int i = 0; i < P; ++i) parts.push_back(pattern(i, {2 * P, 3}).narrow(0, 2 * r, 2));
    check_equal(comm.all_to_all(on(pattern(r, {2 * P, 3})), 0, 1), at::cat(parts, 1), tag + " all_to_all equal");
    // and the way back: scatter dim 1, gather dim 0, in bfloat16.
    std::vector<at::Tensor> back;
    for (int i = 0; i < P; ++i) back.push_back(pattern(i, {3, 2 * P}, at::kBFloat16).narrow(1, 2 * r, 2));
    check_equal(comm.all_to_all(on(pattern(r, {3, 2 * P}, at::kBFloat16)), 1, 0), at::cat(back, 0),
                tag + " all_to_all equal, dims 1 -> 0");
  }
  // all_to_all, uneven: member j gets j rows (member 0 none); member i has i + 2 columns.
  {
    std::vector<int64_t> scatter_sizes, gather_sizes;
    int64_t rows = 0;
    for (int j = 0; j < P; ++j) {
      scatter_sizes.push_back(j);
      gather_sizes.push_back(j + 2);
      rows += j;
    }
    const int64_t my_start = static_cast<int64_t>(r) * (r - 1) / 2;
    std::vector<at::Tensor> parts;
    for (int i = 0; i < P; ++i) parts.push_back(pattern(i, {rows, i + 2, 2}).narrow(0, my_start, r));
    check_equal(comm.all_to_all(on(pattern(r, {rows, r + 2, 2})), 0, 1, scatter_sizes, gather_sizes),
                at::cat(parts, 1), tag + " all_to_all uneven");
  }
  // all_to_all_into with raw row splits: member a sends (a + b) % 3 rows of 4 to member b.
  {
    std::vector<int64_t> in_splits, out_splits;
    for (int j = 0; j < P; ++j) in_splits.push_back((r + j) % 3);
    for (int i = 0; i < P; ++i) out_splits.push_back((i + r) % 3);
    int64_t in_rows = 0, out_rows = 0;
    for (int j = 0; j < P; ++j) {
      in_rows += in_splits[static_cast<size_t>(j)];
      out_rows += out_splits[static_cast<size_t>(j)];
    }
    std::vector<at::Tensor> expected;
    for (int i = 0; i < P; ++i) {
      int64_t start = 0, total = 0;
      for (int j = 0; j < P; ++j) total += (i + j) % 3;
      for (int j = 0; j < r; ++j) start += (i + j) % 3;
      expected.push_back(pattern(i, {total, 4}).narrow(0, start, (i + r) % 3));
    }
    at::Tensor output = at::full({out_rows, 4}, -1.0f, at::TensorOptions().device(dev));
    comm.all_to_all_into(output, on(pattern(r, {in_rows, 4})), out_splits, in_splits).wait();
    check_equal(output, at::cat(expected, 0), tag + " all_to_all_into uneven splits");
  }
  // broadcast from every root.
  for (int root = 0; root < P; ++root)
    check_equal(comm.broadcast(on(pattern(r, {5})), root), pattern(root, {5}), tag + " broadcast from " + std::to_string(root));
  // A ring: pass blocks around P - 1 times (ring attention's K/V rotation); each hop is one send_recv.
  {
    at::Tensor block = on(pattern(r, {4, 2}));
    for (int step = 1; step < P; ++step) {
      at::Tensor incoming = at::empty_like(block);
      comm.send_recv(block, (r + 1) % P, incoming, (r - 1 + P) % P).wait();
      block = incoming;
      check_equal(block, pattern((r - step + P) % P, {4, 2}), tag + " ring step " + std::to_string(step));
    }
  }
  // Plain send/recv between members 0 and 1, two messages in order.
  if (P >= 2 && r < 2) {
    if (r == 0) {
      comm.send(on(pattern(7, {3})), 1).wait();
      comm.send(on(pattern(8, {5})), 1).wait();
    } else {
      at::Tensor first = at::empty({3}, at::TensorOptions().device(dev)), second = at::empty({5}, at::TensorOptions().device(dev));
      Work a = comm.recv(first, 0);
      Work b = comm.recv(second, 0);
      a.wait();
      b.wait();
      check_equal(first, pattern(7, {3}), tag + " recv #1");
      check_equal(second, pattern(8, {5}), tag + " recv #2");
    }
  }
  comm.barrier();
}

int run_collectives() {
  Distributed dist = Distributed::init(options_from_environment());
  const auto start = std::chrono::steady_clock::now();
  Communicator& world = dist.communicator();
  const int r = dist.rank(), P = dist.world_size();
  check(world.size() == P && world.rank() == r, "world communicator rank/size");
  collectives_on(world, "world");

  // Sub-groups: even and odd ranks, ordered by descending rank (key = -rank).
  auto parity = world.split(r % 2, -r);
  {
    std::vector<int> expected;
    for (int i = P - 1; i >= 0; --i)
      if (i % 2 == r % 2) expected.push_back(i);
    check(parity && parity->global_ranks() == expected, "parity split members");
    const at::Tensor ranks = parity->all_gather(at::full({1}, r, at::kLong).to(parity->device()));
    check_equal(ranks, at::tensor(std::vector<int64_t>(expected.begin(), expected.end())), "parity all_gather of ranks");
    collectives_on(*parity, "parity");
  }
  // A 2D mesh (rows x columns of 2) when the world has 4 ranks, as context parallelism uses it.
  if (P == 4) {
    auto row = world.split(r / 2, r);
    auto column = world.split(r % 2, r);
    check(row->global_ranks() == std::vector<int>{r / 2 * 2, r / 2 * 2 + 1}, "mesh row members");
    check(column->global_ranks() == std::vector<int>{r % 2, r % 2 + 2}, "mesh column members");
    collectives_on(*row, "row");
    collectives_on(*column, "column");
  }
  // A split where some ranks take no part.
  auto some = world.split(r == 0 ? -1 : 0, 0);
  check(r == 0 ? some == nullptr : some && some->size() == P - 1, "split with a negative color");
  if (some) collectives_on(*some, "without rank 0");

  dist.barrier();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::cout << (failures ? "FAILED " : "ok ") << checks - failures << "/" << checks << " checks on " << world.backend()
            << " (" << dist.device().str() << "), " << P << " ranks, " << ms << " ms" << std::endl;
  return failures ? 1 : 0;
}

int run_split_and_gather() {
  Distributed dist = Distributed::init(options_from_environment());
  const int r = dist.rank(), P = dist.world_size();
  for (int n : {0, 1, P - 1, P, P + 1, 2 * P + 1, 10}) {
    if (n < 0) continue;
    std::vector<std::string> items;
    for (int i = 0; i < n; ++i) items.push_back("item " + std::to_string(i));
    for (bool padding : {false, true}) {
      const auto mine = dist.split_between_processes(items, padding);
      const auto all = dist.gather_to_main(mine);
      if (r != 0) {
        check(all.empty(), "gather_to_main is empty off rank 0");
        continue;
      }
      std::vector<std::string> expected;
      if (!padding) {
        expected = items;
      } else {
        for (int q = 0; q < P; ++q)
          for (auto& item : split_between_processes(items, q, P, true)) expected.push_back(item);
      }
      check(all == expected, "gathered " + std::to_string(n) + " items" + (padding ? " with padding" : ""));
      if (padding && n > 0) check(static_cast<int>(all.size()) == P * ((n + P - 1) / P), "padded counts are equal");
    }
  }
  // Tensors with a different first dim on each rank, gathered to rank 0 in rank order.
  const at::Tensor mine = pattern(r, {r + 1, 3}).to(dist.device());
  const at::Tensor gathered = dist.gather_to_main(mine);
  if (r == 0) {
    std::vector<at::Tensor> parts;
    for (int i = 0; i < P; ++i) parts.push_back(pattern(i, {i + 1, 3}));
    check_equal(gathered, at::cat(parts, 0), "gather_to_main of tensors");
  } else {
    check(!gathered.defined(), "gather_to_main tensor is undefined off rank 0");
  }
  // Strings with separators and empty ones survive the trip.
  const auto odd = dist.gather_to_main(std::vector<std::string>{"", "a:b", std::to_string(r) + "\n"});
  if (r == 0) check(static_cast<int>(odd.size()) == 3 * P && odd[1] == "a:b" && odd[2] == "0\n", "strings with separators");
  dist.barrier();
  std::cout << (failures ? "FAILED " : "ok ") << checks - failures << "/" << checks << " checks, " << P << " ranks" << std::endl;
  return failures ? 1 : 0;
}

// One rank leaves after a first collective that everybody completes; the others go on and must
// fail, naming it.
int run_leave(int leaver, const std::string& how) {
  Distributed dist = Distributed::init(options_from_environment());
  Communicator& comm = dist.communicator();
  const at::Tensor x = at::ones({16}, at::TensorOptions().device(comm.device()));
  comm.all_gather(x);
  comm.barrier();
  if (dist.rank() == leaver) {
    std::cout << "rank " << leaver << " leaves (" << how << ")" << std::endl;
    if (how == "kill") kill(getpid(), SIGKILL);
    if (how == "hang") std::this_thread::sleep_for(std::chrono::hours(1));
    return 0;  // "return": Distributed's destructor says goodbye
  }
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) comm.all_gather(x);
  comm.barrier();
  std::cout << "no error after " << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
            << " s" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  const auto start = std::chrono::steady_clock::now();
  try {
    if (scenario == "collectives") return run_collectives();
    if (scenario == "split_and_gather") return run_split_and_gather();
    if (scenario == "leave" && argc > 3) return run_leave(std::stoi(argv[2]), argv[3]);
    if (scenario == "init_only") {
      struct Said {
        std::chrono::steady_clock::time_point start;
        ~Said() {
          std::cout << "left after " << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
                    << " s" << std::endl;
        }
      } said{start};
      Distributed dist = Distributed::init(options_from_environment());
      std::cout << "rank " << dist.rank() << " of " << dist.world_size() << " on " << dist.device().str() << ", init "
                << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s" << std::endl;
      return 0;
    }
    std::cerr << "usage: helper_distributed collectives|split_and_gather|leave RANK return|kill|hang|init_only\n";
    return 2;
  } catch (const Error& e) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "error after " << seconds << " s: " << e.what() << std::endl;
    return 3;
  } catch (const std::exception& e) {
    std::cout << "unexpected exception (not diffuse::Error): " << e.what() << std::endl;
    return 4;
  }
}
