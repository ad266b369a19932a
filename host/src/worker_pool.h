// Worker threads for blocking host services, shared fairly between extensions. Jobs
// wait in one queue per extension and are taken round-robin; while more than one worker
// exists, one extension never holds all of them (a handler that blocks forever leaves
// the others' services running), and it may have at most `max_jobs` queued or running.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace airlock::detail {

class WorkerPool {
 public:
  explicit WorkerPool(unsigned threads);
  ~WorkerPool();  // runs the jobs already queued, then joins
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // false (and `job` dropped): `owner` has max_jobs queued or running already.
  bool submit(const void* owner, uint32_t max_jobs, std::function<void()> job);
  size_t threads() const { return threads_.size(); }

 private:
  struct Queue {
    std::deque<std::function<void()>> jobs;
    uint32_t running = 0;
  };
  void work();
  bool take(std::function<void()>& job, const void*& owner);  // under mu_

  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<const void*, Queue> queues_;
  std::deque<const void*> turn_;  // owners with queued jobs, in round-robin order
  uint32_t max_running_per_owner_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace airlock::detail
