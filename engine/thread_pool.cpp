// A fork-join pool: the caller runs chunk 0, workers run the rest, everyone meets at the end.
#include "engine/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/error.h"

extern "C" void openblas_set_num_threads(int);

namespace sp {

namespace {

thread_local bool t_inside_pool = false;

class ThreadPool {
 public:
  explicit ThreadPool(int threads) { resize(threads); }
  ~ThreadPool() { stop(); }

  int size() const { return int(workers_.size()) + 1; }

  void resize(int threads) {
    stop();
    stopping_.store(false);
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
  }

  void run(int64_t chunks, const std::function<void(int64_t)>& task) {
    std::unique_lock<std::mutex> job_lock(job_mutex_);  // one job at a time
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      chunks_ = chunks;
      next_chunk_.store(1);
      remaining_.store(chunks);
      error_ = nullptr;
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    run_chunks(task, chunks, 0);
    // Also wait for workers still inside the loop, so none can touch this job after we return.
    std::unique_lock<std::mutex> lock = poll_then_wait(
        done_, [this] { return remaining_.load() == 0 && active_workers_.load() == 0; });
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Returns holding mutex_ once ready() holds. Sleeping on a condition variable and being woken
  // costs tens of microseconds, as much as a whole decode-step GEMV, so a thread expecting the
  // next job or its partners' chunks first polls for a while (~50 us) without the lock; ready()
  // is checked again under it, where the decision is made.
  template <typename Ready>
  std::unique_lock<std::mutex> poll_then_wait(std::condition_variable& cv, Ready ready) {
    constexpr int kPolls = 4096;
    for (int poll = 0; poll < kPolls && !ready(); ++poll) pause();
    std::unique_lock<std::mutex> lock(mutex_);
    cv.wait(lock, ready);
    return lock;
  }
  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  void run_chunks(const std::function<void(int64_t)>& task, int64_t chunks, int64_t first) {
    t_inside_pool = true;
    for (int64_t chunk = first; chunk < chunks; chunk = next_chunk_.fetch_add(1)) {
      try {
        task(chunk);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (remaining_.fetch_sub(1) == 1) done_.notify_all();
    }
    t_inside_pool = false;
  }

  void worker_loop(int /*index*/) {
    uint64_t seen = 0;
    while (true) {
      const std::function<void(int64_t)>* task = nullptr;
      int64_t chunks = 0;
      {
        std::unique_lock<std::mutex> lock =
            poll_then_wait(wake_, [&] { return stopping_.load() || generation_.load() != seen; });
        if (stopping_.load()) return;
        seen = generation_.load();
        if (task_ == nullptr) continue;  // woke after that job finished
        task = task_;
        chunks = chunks_;
        active_workers_.fetch_add(1);
      }
      run_chunks(*task, chunks, next_chunk_.fetch_add(1));
      std::lock_guard<std::mutex> lock(mutex_);
      if (active_workers_.fetch_sub(1) == 1) done_.notify_all();
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_.store(true);
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
    workers_.clear();
  }

  std::mutex job_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};
  // Written under mutex_ (so that waiters never miss a change) and read without it while polling.
  std::atomic<int64_t> remaining_{0};
  std::atomic<int> active_workers_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stopping_{false};
  std::exception_ptr error_;
};

int default_threads() {
  if (const char* env = std::getenv("SOFTPROMPT_NUM_THREADS")) {
    char* end = nullptr;
    long value = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && value >= 1 && value <= 1024) return int(value);
    fail(ErrorKind::kInvalidArgument, "SOFTPROMPT_NUM_THREADS='", env,
         "': expected an integer from 1 to 1024");
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

ThreadPool& pool() {
  static ThreadPool instance([] {
    int threads = default_threads();
    openblas_set_num_threads(1);
    return threads;
  }());
  return instance;
}

}  // namespace

int num_threads() {
  return pool().size();
}

void set_num_threads(int threads) {
  SP_CHECK(threads >= 1, "set_num_threads: expected at least 1 thread, got ", threads);
  openblas_set_num_threads(1);
  if (threads != pool().size()) pool().resize(threads);
}

int64_t parallel_chunks(int64_t begin, int64_t end, int64_t grain) {
  int64_t n = end - begin;
  if (n <= 0) return 0;
  grain = std::max<int64_t>(grain, 1);
  int64_t by_grain = (n + grain - 1) / grain;
  return std::max<int64_t>(1, std::min<int64_t>(num_threads(), by_grain));
}

void parallel_for_chunks(int64_t begin, int64_t end, int64_t grain,
                         const std::function<void(int64_t, int64_t, int64_t)>& fn) {
  int64_t chunks = parallel_chunks(begin, end, grain);
  if (chunks == 0) return;
  int64_t n = end - begin;
  auto bounds = [=](int64_t chunk) { return begin + n * chunk / chunks; };
  if (chunks == 1 || t_inside_pool) {
    for (int64_t c = 0; c < chunks; ++c) fn(c, bounds(c), bounds(c + 1));
    return;
  }
  std::function<void(int64_t)> task = [&](int64_t c) { fn(c, bounds(c), bounds(c + 1)); };
  pool().run(chunks, task);
}

void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn) {
  parallel_for_chunks(begin, end, grain, [&](int64_t, int64_t lo, int64_t hi) { fn(lo, hi); });
}

}  // namespace sp
