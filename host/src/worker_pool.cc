#include "worker_pool.h"

#include <algorithm>

namespace airlock::detail {

WorkerPool::WorkerPool(unsigned threads) {
  threads = std::max(1u, threads);
  max_running_per_owner_ = threads > 1 ? threads - 1 : 1;
  for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

bool WorkerPool::submit(const void* owner, uint32_t max_jobs, std::function<void()> job) {
  {
    std::lock_guard lk(mu_);
    Queue& q = queues_[owner];
    if (q.jobs.size() + q.running >= max_jobs) {
      if (q.jobs.empty() && q.running == 0) queues_.erase(owner);
      return false;
    }
    if (q.jobs.empty()) turn_.push_back(owner);
    q.jobs.push_back(std::move(job));
  }
  cv_.notify_one();
  return true;
}

bool WorkerPool::take(std::function<void()>& job, const void*& owner) {
  for (auto it = turn_.begin(); it != turn_.end(); ++it) {
    Queue& q = queues_[*it];
    if (q.running >= max_running_per_owner_) continue;
    owner = *it;
    job = std::move(q.jobs.front());
    q.jobs.pop_front();
    q.running++;
    turn_.erase(it);
    if (!q.jobs.empty()) turn_.push_back(owner);  // its next job waits for the others' turns
    return true;
  }
  return false;
}

void WorkerPool::work() {
  std::unique_lock lk(mu_);
  for (;;) {
    std::function<void()> job;
    const void* owner = nullptr;
    cv_.wait(lk, [&] { return take(job, owner) || (stop_ && turn_.empty()); });
    if (!job) return;
    lk.unlock();
    job();
    job = nullptr;  // its captures go outside the lock
    lk.lock();
    Queue& q = queues_[owner];
    q.running--;
    if (q.running == 0 && q.jobs.empty()) queues_.erase(owner);
    cv_.notify_all();  // an owner at its running limit may take its next job now
  }
}

}  // namespace airlock::detail
