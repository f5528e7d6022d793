// engine/cpu/onednn_thread.h: how oneDNN is called from softprompt's threads: single-threaded
// (the pool already split the work) and with asynchronous signals held back during its sgemm.
#pragma once

#include <omp.h>
#include <pthread.h>
#include <signal.h>

namespace sp::cpu_detail {

// Makes oneDNN calls from the calling thread single-threaded (once per thread). Debian's oneDNN
// runs on OpenMP, and a GEMM panel is already one pool thread's share of the work.
inline void keep_onednn_on_this_thread() {
  thread_local const bool single_threaded = (omp_set_num_threads(1), true);
  (void)single_threaded;
}

// While alive, signals sent to this thread wait (pending) instead of running their handler;
// they run when it ends. Why: oneDNN 2.6's JIT sgemm kernels point RSP into a heap workspace
// (upstream issue 4845, fixed in oneDNN 3.11.1; Debian 12 ships 2.6.3), so a handler running
// inside one writes its signal frame over the heap: a Ctrl-C during training corrupted malloc's
// chunks. Faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS) stay deliverable, since a
// blocked synchronous fault kills the process without its handler. Costs two rt_sigprocmask
// calls per GEMM panel, well under a microsecond each.
class AsyncSignalsHeldBack {
 public:
  AsyncSignalsHeldBack() {
    sigset_t held;
    sigfillset(&held);
    for (int fault : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS}) sigdelset(&held, fault);
    pthread_sigmask(SIG_BLOCK, &held, &saved_);
  }
  ~AsyncSignalsHeldBack() { pthread_sigmask(SIG_SETMASK, &saved_, nullptr); }
  AsyncSignalsHeldBack(const AsyncSignalsHeldBack&) = delete;
  AsyncSignalsHeldBack& operator=(const AsyncSignalsHeldBack&) = delete;

 private:
  sigset_t saved_;
};

}  // namespace sp::cpu_detail
