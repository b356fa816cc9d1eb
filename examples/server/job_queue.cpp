#include "server/job_queue.hpp"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <random>

#include "diffuse/error.hpp"
#include "server/api_error.hpp"

namespace diffuse::server {

struct JobQueue::Job {
  std::string id;
  GenerationParams params;
  bool pinned = false;
  JobState state = JobState::Queued;
  int64_t step = 0;
  int64_t total_steps = 0;
  std::string error;
  std::vector<std::string> pngs;
  int64_t width = 0, height = 0;
  int64_t created_unix = 0;
  std::chrono::steady_clock::time_point finished_at;
  uint64_t version = 1;
  bool cancel_requested = false;
  bool forgotten = false;  // its sync client is gone: dropped once its worker finishes it
};

namespace {

// Job ids are random, so that one client cannot guess and read or cancel another's jobs.
std::string new_job_id() {
  static std::mutex mutex;
  static std::mt19937_64 generator{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mutex);
  static const char* digits = "0123456789abcdef";
  std::string id;
  for (int part = 0; part < 2; ++part) {
    uint64_t bits = generator();
    for (int i = 0; i < 16; ++i, bits >>= 4) id += digits[bits & 15];
  }
  return id;
}

// A runner's idle() or stop() failing (a rank of a context-parallel world gone) is logged: it must not
// end the worker thread (and with it the process) by an escaping exception.
template <typename Call>
void call_quietly(const char* what, Call call) {
  try {
    call();
  } catch (const c10::Error& e) {
    std::cerr << "diffuse-server: " << what << ": " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "diffuse-server: " << what << ": " << e.what() << "\n";
  }
}

// How often an idle worker calls its runner's idle().
constexpr std::chrono::seconds kIdleInterval{5};

}  // namespace

const char* to_string(JobState state) {
  switch (state) {
    case JobState::Queued: return "queued";
    case JobState::Running: return "running";
    case JobState::Succeeded: return "succeeded";
    case JobState::Failed: return "failed";
    case JobState::Cancelled: return "cancelled";
  }
  return "unknown";
}

JobQueue::JobQueue(JobQueueOptions options, std::vector<std::unique_ptr<JobRunner>> runners)
    : options_(options), runners_(std::move(runners)) {
  totals_.workers = runners_.size();
  for (size_t i = 0; i < runners_.size(); ++i) workers_.emplace_back([this, i] { work(i); });
}

JobQueue::~JobQueue() { shutdown(std::chrono::seconds(0)); }

JobSnapshot JobQueue::submit(const GenerationParams& params, bool pinned) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_) throw ApiError(503, "", "the server is stopping and takes no new jobs");
  reap_locked();
  if (waiting_.size() >= options_.capacity) {
    ++totals_.rejected;
    throw ApiError(429, "", "the queue is full (" + std::to_string(options_.capacity) + " jobs waiting); retry later");
  }
  auto job = std::make_shared<Job>();
  job->id = new_job_id();
  job->params = params;
  job->pinned = pinned;
  job->total_steps = params.steps;
  job->created_unix = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch()).count();
  jobs_[job->id] = job;
  waiting_.push_back(job);
  ++totals_.accepted;
  changed_.notify_all();
  return snapshot_locked(*job, false);
}

int64_t JobQueue::retry_after_seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  const double ahead = static_cast<double>(waiting_.size() + running_);
  const double workers = static_cast<double>(std::max<size_t>(1, runners_.size()));
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(seconds_per_job_ * ahead / workers)));
}

JobSnapshot JobQueue::snapshot_locked(const Job& job, bool with_images) const {
  JobSnapshot s;
  s.id = job.id;
  s.params = job.params;
  s.state = job.state;
  if (job.state == JobState::Queued) {
    const auto it = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& j) { return j.get() == &job; });
    s.queue_position = it == waiting_.end() ? 0 : static_cast<int64_t>(it - waiting_.begin()) + 1;
  }
  s.step = job.step;
  s.total_steps = job.total_steps;
  s.error = job.error;
  if (with_images) s.pngs = job.pngs;
  s.width = job.width;
  s.height = job.height;
  s.created_unix = job.created_unix;
  s.version = job.version;
  return s;
}

std::optional<JobSnapshot> JobQueue::get(const std::string& id, bool with_images) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::nullopt;
  return snapshot_locked(*it->second, with_images);
}

std::optional<JobSnapshot> JobQueue::wait_for_change(const std::string& id, uint64_t after_version,
                                                     std::chrono::milliseconds timeout, bool with_images) const {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::nullopt;
  const std::shared_ptr<Job> job = it->second;
  changed_.wait_for(lock, timeout, [&] { return job->version > after_version || is_final(job->state); });
  return snapshot_locked(*job, with_images);
}

std::optional<JobSnapshot> JobQueue::wait_until_done(const std::string& id) const {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::nullopt;
  const std::shared_ptr<Job> job = it->second;
  changed_.wait(lock, [&] { return is_final(job->state); });
  return snapshot_locked(*job, true);
}

bool JobQueue::cancel(const std::string& id, const std::string& why) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = jobs_.find(id);
  if (it == jobs_.end() || is_final(it->second->state)) return false;
  Job& job = *it->second;
  if (job.state == JobState::Queued) {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), it->second));
    finish(job, JobState::Cancelled, why);
  } else if (!job.cancel_requested) {
    job.cancel_requested = true;  // the worker's step callback stops the call
    job.error = why;
    ++job.version;
    changed_.notify_all();
  }
  return true;
}

void JobQueue::forget(const std::string& id) {
  cancel(id, "its client is gone");
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = jobs_.find(id);
  // A running job is dropped when its worker finishes it (it is unpinned now).
  if (it == jobs_.end()) return;
  if (is_final(it->second->state)) jobs_.erase(it);
  else it->second->forgotten = true;
}

void JobQueue::finish(Job& job, JobState state, std::string error) {
  job.state = state;
  job.error = std::move(error);
  job.finished_at = std::chrono::steady_clock::now();
  ++job.version;
  if (state == JobState::Succeeded) ++totals_.succeeded;
  if (state == JobState::Failed) ++totals_.failed;
  if (state == JobState::Cancelled) ++totals_.cancelled;
  changed_.notify_all();
}

void JobQueue::reap_locked() {
  const auto now = std::chrono::steady_clock::now();
  std::vector<std::pair<std::chrono::steady_clock::time_point, std::string>> finished;
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    const Job& job = *it->second;
    if (!job.pinned && is_final(job.state) &&
        std::chrono::duration<double>(now - job.finished_at).count() > options_.retention_seconds) {
      it = jobs_.erase(it);
      continue;
    }
    if (!job.pinned && is_final(job.state)) finished.emplace_back(job.finished_at, job.id);
    ++it;
  }
  if (finished.size() <= options_.max_retained) return;
  std::sort(finished.begin(), finished.end());
  for (size_t i = 0; i + options_.max_retained < finished.size(); ++i) jobs_.erase(finished[i].second);
}

void JobQueue::work(size_t worker) {
  JobRunner& runner = *runners_[worker];
  for (;;) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!changed_.wait_for(lock, kIdleInterval, [&] { return stopping_ || !waiting_.empty(); })) {
      lock.unlock();
      call_quietly("idle", [&] { runner.idle(); });
      continue;
    }
    if (waiting_.empty()) break;  // stopping, nothing left
    const std::shared_ptr<Job> job = waiting_.front();
    waiting_.pop_front();
    job->state = JobState::Running;
    ++job->version;
    ++running_;
    changed_.notify_all();
    lock.unlock();

    const auto start = std::chrono::steady_clock::now();
    JobOutput output;
    std::string error;
    try {
      output = runner.run(job->params, [&](int64_t step, int64_t total) {
        std::lock_guard<std::mutex> guard(mutex_);
        job->step = step;
        job->total_steps = total;
        ++job->version;
        changed_.notify_all();
        return !job->cancel_requested;
      });
    } catch (const c10::Error& e) {
      error = e.what_without_backtrace();
    } catch (const std::exception& e) {
      error = e.what();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    lock.lock();
    --running_;
    seconds_per_job_ = seconds_per_job_ == 0 ? seconds : 0.8 * seconds_per_job_ + 0.2 * seconds;
    if (!error.empty()) {
      finish(*job, JobState::Failed, error);
    } else if (output.cancelled || job->cancel_requested) {
      finish(*job, JobState::Cancelled, job->error.empty() ? "cancelled" : job->error);
    } else {
      job->pngs = std::move(output.pngs);
      job->width = output.width;
      job->height = output.height;
      job->step = job->total_steps;
      finish(*job, JobState::Succeeded, "");
    }
    if (job->forgotten) jobs_.erase(job->id);
  }
  call_quietly("stop", [&] { runner.stop(); });
}

QueueCounts JobQueue::counts() const {
  std::lock_guard<std::mutex> lock(mutex_);
  QueueCounts c = totals_;
  c.queued = waiting_.size();
  c.running = running_;
  c.retained = jobs_.size();
  return c;
}

std::vector<std::string> JobQueue::describe_workers() const {
  std::vector<std::string> out;
  for (const auto& runner : runners_) out.push_back(runner->describe());
  return out;
}

void JobQueue::shutdown(std::chrono::duration<double> grace) {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (joined_) return;
    stopping_ = true;
    while (!waiting_.empty()) {
      const std::shared_ptr<Job> job = waiting_.front();
      waiting_.pop_front();
      finish(*job, JobState::Cancelled, "the server is stopping");
    }
    changed_.notify_all();
    changed_.wait_for(lock, grace, [&] { return running_ == 0; });
    for (auto& [id, job] : jobs_)
      if (job->state == JobState::Running && !job->cancel_requested) {
        job->cancel_requested = true;
        job->error = "the server is stopping";
        ++job->version;
      }
    changed_.notify_all();
  }
  for (auto& worker : workers_) worker.join();
  std::lock_guard<std::mutex> lock(mutex_);
  joined_ = true;
}

}  // namespace diffuse::server
