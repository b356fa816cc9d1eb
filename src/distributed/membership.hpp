#pragma once
// Internal: what the ranks of one world know about each other, through the c10d store they share.
//
// Each rank publishes under the store's keys
//   beat/<rank>    "<counter> <communicator>=<operations started> ..." rewritten every interval by a
//                  thread of its own (its own store connection, so that a long wait cannot stall it);
//   status/<rank>  "left" when it leaves the group, or "failed <blamed ranks>\n<message>".
// Waiting on others (meetings, barriers) and explaining a failed collective read them: a rank that
// left, failed or whose counter stopped is named at once, instead of every rank waiting out the
// timeout or blaming the neighbour that merely failed after it.

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "diffuse/error.hpp"
#include "diffuse/errors.hpp"

namespace diffuse::distributed_detail {

using Clock = std::chrono::steady_clock;
using Milliseconds = std::chrono::milliseconds;

// Who is at fault for a failed wait, and in words ("rank 2 exited (it left the process group)").
struct Blame {
  std::vector<int> ranks;  // world ranks; empty when nobody is known to be at fault
  std::string reason;
};

// "rank 2", "ranks 1, 3".
std::string describe_ranks(const std::vector<int>& ranks);

class Membership {
 public:
  struct Options {
    int rank = 0;
    int world = 1;
    Milliseconds timeout{600000};
    Milliseconds interval{2000};      // heartbeat period
    std::string store_owner = "rank 0";  // who hosts the store, for messages when it stops answering
  };
  // `store`: this rank's connection (keys already prefixed). `heartbeat_store`: a second connection
  // to the same store for the heartbeat thread; null means no heartbeat (a world of one).
  Membership(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<c10d::Store> heartbeat_store,
             Options options);
  ~Membership();
  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;

  int rank() const { return options_.rank; }
  int world() const { return options_.world; }
  Milliseconds timeout() const { return options_.timeout; }
  Milliseconds interval() const { return options_.interval; }
  const c10::intrusive_ptr<c10d::Store>& store() const { return store_; }

  // Store access that turns a store that stopped answering into an Error naming its host.
  void set(const std::string& key, const std::string& value);
  std::optional<std::string> try_get(const std::string& key);

  // Publishes "<key>/<rank>" = value, then waits until every rank in `ranks` has published under
  // `key`. Fails fast, naming them, when one of the missing ranks left, failed or died; fails after
  // the timeout naming those that never came. `what` names the step in messages.
  void arrive_and_wait(const std::string& key, const std::vector<int>& ranks, const std::string& what,
                       const std::string& value = "1");
  // Waits for a key that rank `owner` sets, with the same rules.
  std::string wait_for_key(const std::string& key, int owner, const std::string& what);

  // A counter of operations started on communicator `name`, published with each heartbeat.
  std::shared_ptr<std::atomic<uint64_t>> register_progress(const std::string& name);

  // Without waiting: one of `ranks` that is known to be gone (left, failed, or silent for three
  // heartbeat intervals since this rank first looked), or the store's host when the store is gone.
  std::optional<Blame> departed(const std::vector<int>& ranks);
  // After an operation on communicator `progress_name` (this rank's operation number `op_number`)
  // failed or timed out: watches `ranks` for about three intervals and says who is at fault.
  Blame diagnose(const std::vector<int>& ranks, const std::string& progress_name, uint64_t op_number);

  // The error for `what` failing on this rank; publishes the failure, so that the others blame the
  // same rank rather than this one.
  DistributedError fail(const std::string& what, const Blame& blame, const std::string& cause = "");
  // Publishes that this rank leaves, and stops the heartbeat.
  void leave();
  // For the store's host before it closes the store: waits (within the timeout) until every other
  // rank has left, failed or gone silent.
  void wait_for_others_to_leave();

 private:
  struct Seen {
    std::string beat;
    Clock::time_point changed_at;
  };
  struct Status {
    enum Kind { None, Left, Failed } kind = None;
    std::vector<int> blamed;
    std::string reason;   // its verdict on who is at fault
    std::string message;  // its whole error
  };
  std::optional<Blame> find_departed(const std::vector<int>& ranks);  // may throw (store lost)
  Status read_status(int rank);
  void observe(const std::vector<int>& ranks);  // reads beats, notes when each last changed
  bool silent(int rank);                         // no beat change for 3 intervals
  std::map<std::string, uint64_t> progress_of(int rank);
  DistributedError store_lost(const std::exception& e) const;
  void heartbeat_loop();
  std::string beat_value();

  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Store> heartbeat_store_;
  Options options_;

  std::mutex mutex_;  // seen_, progress_
  std::map<int, Seen> seen_;
  std::map<std::string, std::shared_ptr<std::atomic<uint64_t>>> progress_;

  std::mutex stop_mutex_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  bool left_ = false;
  uint64_t beats_ = 0;
  std::thread heartbeat_;
};

}  // namespace diffuse::distributed_detail
