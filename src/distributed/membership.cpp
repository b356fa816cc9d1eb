#include "distributed/membership.hpp"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace diffuse::distributed_detail {
namespace {

std::vector<uint8_t> bytes(const std::string& text) { return {text.begin(), text.end()}; }
std::string text(const std::vector<uint8_t>& bytes) { return {bytes.begin(), bytes.end()}; }

std::string first_line(const std::string& text, size_t limit = 400) {
  std::string line = text.substr(0, text.find('\n'));
  if (line.size() > limit) line = line.substr(0, limit) + "...";
  return line;
}

std::string seconds(Clock::duration d) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f s", std::chrono::duration<double>(d).count());
  return buffer;
}

std::string join(const std::vector<int>& ranks, const char* separator) {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i) out += (i ? separator : "") + std::to_string(ranks[i]);
  return out;
}

std::vector<int> parse_ranks(const std::string& csv) {
  std::vector<int> ranks;
  std::stringstream in(csv);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty() && item != "-") ranks.push_back(std::stoi(item));
  }
  return ranks;
}

void add_unique(std::vector<int>& ranks, int rank) {
  if (std::find(ranks.begin(), ranks.end(), rank) == ranks.end()) ranks.push_back(rank);
}

}  // namespace

std::string describe_ranks(const std::vector<int>& ranks) {
  return (ranks.size() == 1 ? "rank " : "ranks ") + join(ranks, ", ");
}

Membership::Membership(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<c10d::Store> heartbeat_store,
                       Options options)
    : store_(std::move(store)), heartbeat_store_(std::move(heartbeat_store)), options_(std::move(options)) {
  if (heartbeat_store_) heartbeat_ = std::thread([this] { heartbeat_loop(); });
}

Membership::~Membership() {
  {
    std::lock_guard<std::mutex> lock(stop_mutex_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
}

// ---- store access ------------------------------------------------------------------------------

DistributedError Membership::store_lost(const std::exception& e) const {
  return DistributedError(options_.store_owner + " is gone: the rendezvous store it hosts no longer answers (" +
               first_line(e.what()) + ")");
}

void Membership::set(const std::string& key, const std::string& value) {
  try {
    store_->set(key, bytes(value));
  } catch (const std::exception& e) {
    throw store_lost(e);
  }
}

std::optional<std::string> Membership::try_get(const std::string& key) {
  try {
    if (!store_->check({key})) return std::nullopt;
    return text(store_->get(key));
  } catch (const std::exception& e) {
    throw store_lost(e);
  }
}

// ---- heartbeat ---------------------------------------------------------------------------------

std::string Membership::beat_value() {
  std::string value = std::to_string(++beats_);
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [name, count] : progress_) value += " " + name + "=" + std::to_string(count->load());
  return value;
}

void Membership::heartbeat_loop() {
  const std::string key = "beat/" + std::to_string(options_.rank);
  std::unique_lock<std::mutex> lock(stop_mutex_);
  while (!stop_) {
    lock.unlock();
    try {
      heartbeat_store_->set(key, bytes(beat_value()));
    } catch (const std::exception&) {
      return;  // the store is gone (its host ended): nobody is left to tell
    }
    lock.lock();
    stop_cv_.wait_for(lock, options_.interval, [this] { return stop_; });
  }
}

std::shared_ptr<std::atomic<uint64_t>> Membership::register_progress(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& counter = progress_[name];
  if (!counter) counter = std::make_shared<std::atomic<uint64_t>>(0);
  return counter;
}

// ---- what the others say -----------------------------------------------------------------------

Membership::Status Membership::read_status(int rank) {
  Status status;
  const auto value = try_get("status/" + std::to_string(rank));
  if (!value) return status;
  if (*value == "left") {
    status.kind = Status::Left;
    return status;
  }
  // "failed <csv>\n<reason>\n<message>"
  status.kind = Status::Failed;
  const size_t first = value->find('\n');
  const std::string header = value->substr(0, first);
  status.blamed = parse_ranks(header.size() > 7 ? header.substr(7) : "");
  const size_t second = first == std::string::npos ? std::string::npos : value->find('\n', first + 1);
  if (first != std::string::npos) status.reason = value->substr(first + 1, second - first - 1);
  status.message = second == std::string::npos ? "" : value->substr(second + 1);
  return status;
}

void Membership::observe(const std::vector<int>& ranks) {
  for (int rank : ranks) {
    if (rank == options_.rank) continue;
    const auto beat = try_get("beat/" + std::to_string(rank));
    if (!beat) continue;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = seen_.find(rank);
    if (it == seen_.end() || it->second.beat != *beat) seen_[rank] = Seen{*beat, Clock::now()};
  }
}

bool Membership::silent(int rank) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = seen_.find(rank);
  return it != seen_.end() && Clock::now() - it->second.changed_at > 3 * options_.interval;
}

std::map<std::string, uint64_t> Membership::progress_of(int rank) {
  std::map<std::string, uint64_t> out;
  const auto beat = try_get("beat/" + std::to_string(rank));
  if (!beat) return out;
  std::stringstream in(*beat);
  std::string item;
  in >> item;  // the counter
  while (in >> item) {
    const size_t eq = item.rfind('=');
    if (eq != std::string::npos) out[item.substr(0, eq)] = std::stoull(item.substr(eq + 1));
  }
  return out;
}

std::optional<Blame> Membership::departed(const std::vector<int>& ranks) {
  try {
    return find_departed(ranks);
  } catch (const Error& e) {
    // The store stopped answering: its host is what is gone.
    return Blame{options_.store_owner == "rank 0" ? std::vector<int>{0} : std::vector<int>{}, e.what()};
  }
}

std::optional<Blame> Membership::find_departed(const std::vector<int>& ranks) {
  observe(ranks);
  Blame direct, reported;
  std::string direct_reason, reported_reason;
  for (int rank : ranks) {
    if (rank == options_.rank) continue;
    const Status status = read_status(rank);
    if (status.kind == Status::Left) {
      add_unique(direct.ranks, rank);
      direct_reason += (direct_reason.empty() ? "" : "; ") + ("rank " + std::to_string(rank) +
                                                              " exited (it left the process group)");
    } else if (status.kind == Status::Failed) {
      // It failed because of someone else (or of itself): adopt its verdict.
      for (int blamed : status.blamed.empty() ? std::vector<int>{rank} : status.blamed) add_unique(reported.ranks, blamed);
      if (reported_reason.empty())
        reported_reason = status.blamed.empty()
                              ? "rank " + std::to_string(rank) + " failed: " + status.message
                              : status.reason + " (as rank " + std::to_string(rank) + " found)";
    } else if (silent(rank)) {
      Clock::time_point since;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        since = seen_[rank].changed_at;
      }
      add_unique(direct.ranks, rank);
      direct_reason += (direct_reason.empty() ? "" : "; ") +
                       ("rank " + std::to_string(rank) + " died or hangs (no heartbeat for " +
                        seconds(Clock::now() - since) + ")");
    }
  }
  if (!direct.ranks.empty()) return Blame{direct.ranks, direct_reason};
  if (!reported.ranks.empty()) return Blame{reported.ranks, reported_reason};
  return std::nullopt;
}

Blame Membership::diagnose(const std::vector<int>& ranks, const std::string& progress_name, uint64_t op_number) {
  try {
    // A rank that died leaves no status; its heartbeat stops. Watch long enough to tell.
    const auto deadline = Clock::now() + options_.interval * 7 / 2;
    while (true) {
      if (auto blame = find_departed(ranks)) return *blame;
      if (Clock::now() >= deadline) break;
      std::this_thread::sleep_for(options_.interval / 2);
    }
    std::vector<int> behind;
    std::string reason;
    for (int rank : ranks) {
      if (rank == options_.rank) continue;
      const auto progress = progress_of(rank);
      const auto it = progress.find(progress_name);
      const uint64_t count = it == progress.end() ? 0 : it->second;
      if (count < op_number) {
        behind.push_back(rank);
        reason += (reason.empty() ? "" : "; ") + ("rank " + std::to_string(rank) + " has not reached it (" +
                                                  std::to_string(count) + " operations started on " +
                                                  progress_name + ", this rank " + std::to_string(op_number) + ")");
      }
    }
    if (!behind.empty()) return Blame{behind, reason};
    return Blame{{}, "every rank is alive and has reached this operation (one may be stuck inside it, or the "
                     "ranks called different operations)"};
  } catch (const Error& e) {
    return Blame{options_.store_owner == "rank 0" ? std::vector<int>{0} : std::vector<int>{}, e.what()};
  }
}

// ---- this rank's own news ----------------------------------------------------------------------

DistributedError Membership::fail(const std::string& what, const Blame& blame, const std::string& cause) {
  std::string message = what + " failed on rank " + std::to_string(options_.rank) + ": " + blame.reason;
  if (!cause.empty()) message += " [" + first_line(cause) + "]";
  try {
    const std::string blamed = blame.ranks.empty() ? "-" : join(blame.ranks, ",");
    store_->set("status/" + std::to_string(options_.rank), bytes("failed " + blamed + "\n" + blame.reason + "\n" + message));
  } catch (const std::exception&) {
    // the store is gone; the message says what is known
  }
  {
    std::lock_guard<std::mutex> lock(stop_mutex_);
    left_ = true;  // "failed" stays the last word
  }
  return DistributedError(message);
}

void Membership::leave() {
  bool already;
  {
    std::lock_guard<std::mutex> lock(stop_mutex_);
    already = left_;
    left_ = true;
  }
  if (!already && heartbeat_store_) {
    try {
      store_->set("status/" + std::to_string(options_.rank), bytes("left"));
    } catch (const std::exception&) {
    }
  }
  {
    std::lock_guard<std::mutex> lock(stop_mutex_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
}

void Membership::wait_for_others_to_leave() {
  const auto deadline = Clock::now() + options_.timeout;
  std::vector<int> others;
  for (int rank = 0; rank < options_.world; ++rank)
    if (rank != options_.rank) others.push_back(rank);
  try {
    while (!others.empty() && Clock::now() < deadline) {
      observe(others);
      std::vector<int> still;
      for (int rank : others)
        if (read_status(rank).kind == Status::None && !silent(rank)) still.push_back(rank);
      others = still;
      if (!others.empty()) std::this_thread::sleep_for(std::min<Milliseconds>(options_.interval / 2, Milliseconds(200)));
    }
  } catch (const std::exception&) {
  }
}

// ---- waiting for each other --------------------------------------------------------------------

void Membership::arrive_and_wait(const std::string& key, const std::vector<int>& ranks, const std::string& what,
                                 const std::string& value) {
  set(key + "/" + std::to_string(options_.rank), value);
  const auto start = Clock::now();
  const auto deadline = start + options_.timeout;
  auto next_health_check = start + options_.interval / 2;
  auto pause = Milliseconds(1);
  std::vector<int> missing;
  for (int rank : ranks)
    if (rank != options_.rank) missing.push_back(rank);
  while (true) {
    std::vector<int> still;
    for (int rank : missing)
      if (!try_get(key + "/" + std::to_string(rank))) still.push_back(rank);
    missing = still;
    if (missing.empty()) return;
    const auto now = Clock::now();
    if (now >= next_health_check) {
      if (auto blame = departed(missing)) throw fail(what, *blame);
      next_health_check = now + options_.interval / 2;
    }
    if (now >= deadline) {
      throw fail(what, Blame{missing, describe_ranks(missing) + " did not arrive within " + seconds(options_.timeout)});
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, Milliseconds(20));
  }
}

std::string Membership::wait_for_key(const std::string& key, int owner, const std::string& what) {
  const auto start = Clock::now();
  const auto deadline = start + options_.timeout;
  auto next_health_check = start + options_.interval / 2;
  auto pause = Milliseconds(1);
  while (true) {
    if (auto value = try_get(key)) return *value;
    const auto now = Clock::now();
    if (now >= next_health_check) {
      if (auto blame = departed({owner})) throw fail(what, *blame);
      next_health_check = now + options_.interval / 2;
    }
    if (now >= deadline)
      throw fail(what, Blame{{owner}, "rank " + std::to_string(owner) + " did not answer within " + seconds(options_.timeout)});
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, Milliseconds(20));
  }
}

}  // namespace diffuse::distributed_detail
