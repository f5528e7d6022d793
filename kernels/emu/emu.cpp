// kernels/emu/emu.cpp: the fiber scheduler behind kernels/emu/emu.h. Blocks run one at a time;
// each CUDA thread of a block is a fiber that yields only at barriers, warp operations and exit.
#include "kernels/emu/emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>

#include "kernels/emu/cuda_runtime_emu.h"
#include "kernels/error.h"

#if defined(__SANITIZE_ADDRESS__)
#define SP_EMU_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define SP_EMU_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer) && !defined(SP_EMU_ASAN)
#define SP_EMU_ASAN 1
#endif
#if __has_feature(thread_sanitizer) && !defined(SP_EMU_TSAN)
#define SP_EMU_TSAN 1
#endif
#endif
#ifndef SP_EMU_ASAN
#define SP_EMU_ASAN 0
#endif
#ifndef SP_EMU_TSAN
#define SP_EMU_TSAN 0
#endif

#if SP_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if SP_EMU_TSAN
#include <sanitizer/tsan_interface.h>
// Code that runs on a fiber but belongs to the emulator must stay invisible to ThreadSanitizer:
// fiber switches deliberately imply no happens-before, so the scheduler's own bookkeeping, shared
// by every fiber, would otherwise be reported as racing. Kernel code stays instrumented.
#define SP_EMU_FIBER_CODE __attribute__((no_sanitize("thread")))
#else
#define SP_EMU_FIBER_CODE
#endif

#if defined(__x86_64__) && !defined(SP_EMU_FORCE_UCONTEXT)
#define SP_EMU_ASM_SWITCH 1
#else
#define SP_EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#if SP_EMU_ASM_SWITCH
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save_sp
// and resumes the context whose stack pointer is load_sp. A switch is a plain call for the
// compiler, so everything caller-saved is already spilled. MXCSR and the x87 control word are
// not switched (saving them costs more than the rest of the switch): every fiber runs with the
// launching thread's floating-point environment, and kernels must not change it.
extern "C" __attribute__((visibility("hidden"))) void sp_emu_switch_context(void** save_sp,
                                                                            void* load_sp);
asm(R"(
  .text
  .p2align 4
  .globl sp_emu_switch_context
  .hidden sp_emu_switch_context
  .type sp_emu_switch_context, @function
sp_emu_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size sp_emu_switch_context, .-sp_emu_switch_context
)");
#endif

namespace sp::emu {
namespace {

using builtin::dim3;
using builtin::uint3;
using detail::BarrierOp;
using detail::WarpOp;

constexpr int kMaxThreads = 1024;
constexpr int kWords = kMaxThreads / 64;
constexpr int kMaxWarps = kMaxThreads / 32;
constexpr std::size_t kSmemDefaultLimit = 48 * 1024;
constexpr std::size_t kSmemOptInLimit = 227 * 1024;

// ---- settings ----------------------------------------------------------------------------

#if SP_EMU_ASAN || SP_EMU_TSAN
constexpr std::size_t kDefaultStackKiB = 256;  // sanitizer frames are several times larger
#else
constexpr std::size_t kDefaultStackKiB = 64;
#endif

struct Settings {
  ScheduleSpec schedule;
  std::uint64_t rng = 0;  // state of the random order; continues across launches
  OnError on_error = OnError::kAbort;
  std::size_t stack_bytes = kDefaultStackKiB * 1024;
};

std::mutex g_settings_mutex;
Settings g_settings;
std::once_flag g_env_once;

SP_EMU_FIBER_CODE std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void load_environment() {
  std::call_once(g_env_once, [] {
    Settings s;
    if (const char* text = std::getenv("SP_EMU_SCHEDULE"); text && *text) {
      s.schedule = parse_schedule(text);
      if (s.schedule.order == Schedule::kRandom && std::string_view(text) == "random") {
        s.schedule.seed =
            (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
      }
    }
    s.rng = s.schedule.seed;
    if (const char* text = std::getenv("SP_EMU_ON_ERROR"); text && *text) {
      const std::string_view v(text);
      if (v == "abort") {
        s.on_error = OnError::kAbort;
      } else if (v == "throw") {
        s.on_error = OnError::kThrow;
      } else {
        fail(ErrorKind::kInvalidArgument, "SP_EMU_ON_ERROR='", v, "': expected abort or throw");
      }
    }
    if (const char* text = std::getenv("SP_EMU_STACK_KB"); text && *text) {
      char* end = nullptr;
      errno = 0;
      const unsigned long long kib = std::strtoull(text, &end, 10);
      if (errno != 0 || end == text || *end != '\0' || kib < 16 || kib > 1024 * 1024) {
        fail(ErrorKind::kInvalidArgument, "SP_EMU_STACK_KB='", text,
             "': expected a whole number of KiB between 16 and 1048576");
      }
      s.stack_bytes = static_cast<std::size_t>(kib) * 1024;
    }
    std::lock_guard lock(g_settings_mutex);
    g_settings = s;
  });
}

// ---- fibers ------------------------------------------------------------------------------

enum class Wait : std::uint8_t { kRunning, kBarrier, kWarp, kExited };

struct Fiber {
#if SP_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc{};
#endif
  void* mapping = nullptr;
  std::size_t mapping_bytes = 0;
  char* stack_lo = nullptr;
  std::size_t stack_bytes = 0;
  std::size_t color = 0;  // bytes left unused at the top of the stack
  void* tsan_fiber = nullptr;
  void* asan_fake_stack = nullptr;
  // ThreadSanitizer sync objects (only their addresses matter). A lane releases to
  // tsan_arrive_sync when it arrives at a warp operation; the fiber that completes the group
  // acquires every participant's arrival and releases to one of its tsan_group_sync, which each
  // participant acquires when it resumes. Two alternate, so a later group completed by the same
  // fiber cannot leak into what a slow participant of this one acquires.
  char tsan_arrive_sync = 0;
  char tsan_group_sync[2] = {};
  unsigned int groups_completed = 0;
  void* acquire_group = nullptr;

  int tid = 0;
  uint3 idx{0, 0, 0};
  Wait wait = Wait::kRunning;
  BarrierOp barrier_op = BarrierOp::kSync;
  WarpOp op = WarpOp::kSyncWarp;
  unsigned int mask = 0;
  std::uint64_t bits = 0;
  std::uint64_t poison = 0;
  int size = 0;
  int arg = 0;
  int width = 32;
  std::uint64_t result = 0;
  std::source_location where;
};

struct MainContext {
#if SP_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc{};
#endif
  void* tsan_fiber = nullptr;
  void* asan_fake_stack = nullptr;
  const void* stack_bottom = nullptr;
  std::size_t stack_size = 0;
};

enum class Failure : std::uint8_t {
  kNone,
  kDeadlock,
  kWarpMismatch,
  kBadMask,
  kBadWidth,
  kTrap,
  kException,
};

// Everything about the block being run. One instance: launches are serialised.
struct Block {
  const detail::LaunchConfig* config = nullptr;
  detail::ThreadMain thread_main = nullptr;
  void* context = nullptr;
  Schedule order = Schedule::kRoundRobin;
  std::uint64_t seed = 0;
  std::uint64_t rng = 0;

  Fiber* fibers[kMaxThreads] = {};
  int n = 0;
  int nwarps = 0;
  int current = -1;  // running fiber, -1 for the launching thread
  bool entering_from_main = false;

  std::uint64_t runnable[kWords] = {};
  std::uint64_t at_barrier[kWords] = {};
  int live = 0;
  int arrived = 0;
  int pred_count = 0;
  std::uint32_t barrier_gen = 0;
  int result_count[2] = {};
  int result_total[2] = {};
  std::uint32_t warp_waiting[kMaxWarps] = {};
  std::uint32_t warp_gone[kMaxWarps] = {};  // exited lanes and lanes past the block's end

  Failure failure = Failure::kNone;
  int failing_tid = -1;
  std::source_location failing_where;
  std::exception_ptr exception;

  unsigned char* smem = nullptr;
  std::uint64_t switches = 0;
  MainContext main;

  // ThreadSanitizer synchronisation objects (only their addresses matter).
  char tsan_block_start = 0;
  char tsan_block_end = 0;
  char tsan_barrier[2] = {};
};

Block g_block;
std::mutex g_launch_mutex;
thread_local bool t_launching = false;
std::vector<std::unique_ptr<Fiber>> g_pool;
std::size_t g_pool_stack_bytes = 0;

std::atomic<std::uint64_t> g_stat_launches{0};
std::atomic<std::uint64_t> g_stat_blocks{0};
std::atomic<std::uint64_t> g_stat_threads{0};
std::atomic<std::uint64_t> g_stat_switches{0};

SP_EMU_FIBER_CODE inline void tsan_release(void* addr) {
#if SP_EMU_TSAN
  __tsan_release(addr);
#else
  (void)addr;
#endif
}
SP_EMU_FIBER_CODE inline void tsan_acquire(void* addr) {
#if SP_EMU_TSAN
  __tsan_acquire(addr);
#else
  (void)addr;
#endif
}

SP_EMU_FIBER_CODE inline void set_bit(std::uint64_t* words, int i) {
  words[i >> 6] |= 1ull << (i & 63);
}
SP_EMU_FIBER_CODE inline void clear_bit(std::uint64_t* words, int i) {
  words[i >> 6] &= ~(1ull << (i & 63));
}
SP_EMU_FIBER_CODE inline Fiber* lane_fiber(Block& b, int warp, int lane) {
  return b.fibers[warp * 32 + lane];
}

// The schedule: which runnable fiber gets the CPU next, -1 if none can run.
SP_EMU_FIBER_CODE int pick_next(Block& b, int current) {
  const int words = (b.n + 63) >> 6;
  switch (b.order) {
    case Schedule::kLowestFirst:
      for (int w = 0; w < words; ++w) {
        if (b.runnable[w]) return w * 64 + std::countr_zero(b.runnable[w]);
      }
      return -1;
    case Schedule::kHighestFirst:
      for (int w = words - 1; w >= 0; --w) {
        if (b.runnable[w]) return w * 64 + 63 - std::countl_zero(b.runnable[w]);
      }
      return -1;
    case Schedule::kRoundRobin: {
      const int start = current + 1 >= b.n ? 0 : current + 1;
      const int w0 = start >> 6;
      const std::uint64_t head = b.runnable[w0] & (~0ull << (start & 63));
      if (head) return w0 * 64 + std::countr_zero(head);
      for (int i = 1; i <= words; ++i) {
        const int w = (w0 + i) % words;
        if (b.runnable[w]) return w * 64 + std::countr_zero(b.runnable[w]);
      }
      return -1;
    }
    case Schedule::kRandom: {
      int total = 0;
      for (int w = 0; w < words; ++w) total += std::popcount(b.runnable[w]);
      if (total == 0) return -1;
      int k = static_cast<int>(splitmix64(b.rng) % static_cast<std::uint64_t>(total));
      for (int w = 0; w < words; ++w) {
        const int c = std::popcount(b.runnable[w]);
        if (k >= c) {
          k -= c;
          continue;
        }
        std::uint64_t m = b.runnable[w];
        for (; k > 0; --k) m &= m - 1;
        return w * 64 + std::countr_zero(m);
      }
      return -1;
    }
  }
  return -1;
}

SP_EMU_FIBER_CODE [[noreturn]] void fiber_entry();

// Runs on the fiber about to be left; returns when `from` is resumed. nullptr means the
// launching thread. A finished fiber passes finished=true so ASan can drop its fake stack.
SP_EMU_FIBER_CODE void switch_context(Block& b, Fiber* from, Fiber* to, bool finished) {
  ++b.switches;
  b.current = to ? to->tid : -1;
  if (to) detail::g_thread_idx = to->idx;
#if SP_EMU_ASAN
  void** fake_save = finished ? nullptr : (from ? &from->asan_fake_stack : &b.main.asan_fake_stack);
  if (to) {
    __sanitizer_start_switch_fiber(fake_save, to->stack_lo, to->stack_bytes);
  } else {
    __sanitizer_start_switch_fiber(fake_save, b.main.stack_bottom, b.main.stack_size);
  }
#else
  (void)finished;
#endif
#if SP_EMU_TSAN
  __tsan_switch_to_fiber(to ? to->tsan_fiber : b.main.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#if SP_EMU_ASM_SWITCH
  sp_emu_switch_context(from ? &from->sp : &b.main.sp, to ? to->sp : b.main.sp);
#else
  swapcontext(from ? &from->uc : &b.main.uc, to ? &to->uc : &b.main.uc);
#endif
#if SP_EMU_ASAN
  __sanitizer_finish_switch_fiber(from ? from->asan_fake_stack : b.main.asan_fake_stack, nullptr,
                                  nullptr);
#endif
}

// Hands the CPU to the launching thread after a failure. The fiber is abandoned there: the
// pool is rebuilt before the next launch, so this never returns.
SP_EMU_FIBER_CODE [[noreturn]] void fail_to_main(Block& b, Fiber* self) {
  tsan_release(&b.tsan_block_end);
  switch_context(b, self, nullptr, false);
  std::abort();
}

// The current fiber has registered a wait (or the block failed): let the schedule pick who runs.
SP_EMU_FIBER_CODE void yield_current(Block& b, Fiber* self) {
  if (b.failure != Failure::kNone) fail_to_main(b, self);
  const int next = pick_next(b, self->tid);
  if (next == self->tid) return;
  if (next < 0) {
    b.failure = Failure::kDeadlock;
    b.failing_tid = self->tid;
    fail_to_main(b, self);
  }
  switch_context(b, self, b.fibers[next], false);
}

SP_EMU_FIBER_CODE void release_barrier(Block& b) {
  const std::uint32_t g = b.barrier_gen & 1u;
  b.result_count[g] = b.pred_count;
  b.result_total[g] = b.arrived;
  const int words = (b.n + 63) >> 6;
  for (int w = 0; w < words; ++w) {
    b.runnable[w] |= b.at_barrier[w];
    b.at_barrier[w] = 0;
  }
  b.arrived = 0;
  b.pred_count = 0;
  ++b.barrier_gen;
}

SP_EMU_FIBER_CODE bool is_shuffle(WarpOp op) {
  return op == WarpOp::kShfl || op == WarpOp::kShflUp || op == WarpOp::kShflDown ||
         op == WarpOp::kShflXor;
}

SP_EMU_FIBER_CODE std::uint64_t shuffle_result(Block& b, int warp, int lane, const Fiber* f,
                                               std::uint32_t participants) {
  const int width = f->width;
  const int base = lane & ~(width - 1);
  int src = lane;
  switch (f->op) {
    case WarpOp::kShfl:
      src = base + (f->arg & (width - 1));
      break;
    case WarpOp::kShflUp:
      src = (f->arg < 0 || lane - base < f->arg) ? lane : lane - f->arg;
      break;
    case WarpOp::kShflDown:
      src = (f->arg < 0 || lane - base + f->arg >= width) ? lane : lane + f->arg;
      break;
    case WarpOp::kShflXor:
      src = lane ^ f->arg;
      if (src >= base + width) src = lane;  // later segments are out of reach: own value
      break;
    default:
      break;
  }
  if (src == lane) return f->bits;
  if (src < 0 || src > 31 || !((participants >> src) & 1u)) return f->poison;
  return lane_fiber(b, warp, src)->bits;
}

// If every live lane named in `leader`'s mask waits in a warp operation, checks that they all
// wait in the same one and hands each its result. Sets b.failure on a mismatch.
SP_EMU_FIBER_CODE void try_complete_warp_op(Block& b, int warp, const Fiber* leader) {
  const std::uint32_t need = leader->mask & ~b.warp_gone[warp];
  if ((b.warp_waiting[warp] & need) != need) return;
  std::uint32_t ballot = 0;
  for (std::uint32_t m = need; m; m &= m - 1) {
    const int lane = std::countr_zero(m);
    const Fiber* f = lane_fiber(b, warp, lane);
    if (f->op != leader->op || f->mask != leader->mask || f->size != leader->size) {
      b.failure = Failure::kWarpMismatch;
      b.failing_tid = f->tid;
      return;
    }
    if (f->bits) ballot |= 1u << lane;
  }
  std::uint64_t common = 0;
  switch (leader->op) {
    case WarpOp::kBallot:
      common = ballot;
      break;
    case WarpOp::kAny:
      common = ballot != 0;
      break;
    case WarpOp::kAll:
      common = ballot == need;
      break;
    case WarpOp::kReduceAddU:
    case WarpOp::kReduceMinU:
    case WarpOp::kReduceMaxU:
    case WarpOp::kReduceAddI:
    case WarpOp::kReduceMinI:
    case WarpOp::kReduceMaxI:
    case WarpOp::kReduceAnd:
    case WarpOp::kReduceOr:
    case WarpOp::kReduceXor: {
      bool first = true;
      std::uint32_t acc = 0;
      for (std::uint32_t m = need; m; m &= m - 1) {
        const auto v = static_cast<std::uint32_t>(lane_fiber(b, warp, std::countr_zero(m))->bits);
        const auto sv = static_cast<std::int32_t>(v);
        const auto sacc = static_cast<std::int32_t>(acc);
        if (first) {
          acc = v;
          first = false;
          continue;
        }
        switch (leader->op) {
          case WarpOp::kReduceAddU:
          case WarpOp::kReduceAddI:
            acc += v;
            break;
          case WarpOp::kReduceMinU:
            acc = v < acc ? v : acc;
            break;
          case WarpOp::kReduceMaxU:
            acc = v > acc ? v : acc;
            break;
          case WarpOp::kReduceMinI:
            acc = static_cast<std::uint32_t>(sv < sacc ? sv : sacc);
            break;
          case WarpOp::kReduceMaxI:
            acc = static_cast<std::uint32_t>(sv > sacc ? sv : sacc);
            break;
          case WarpOp::kReduceAnd:
            acc &= v;
            break;
          case WarpOp::kReduceOr:
            acc |= v;
            break;
          default:
            acc ^= v;
            break;
        }
      }
      common = acc;
      break;
    }
    default:
      break;
  }
  // Happens-before among the participants, through the fiber running now (a participant, or
  // an exiting lane whose exit completed the group). Everybody in the group is blocked at this
  // point, so each arrival object holds exactly what its lane did before arriving.
  void* group = nullptr;
#if SP_EMU_TSAN
  for (std::uint32_t m = need; m; m &= m - 1) {
    tsan_acquire(&lane_fiber(b, warp, std::countr_zero(m))->tsan_arrive_sync);
  }
  Fiber* completer = b.fibers[b.current];
  group = &completer->tsan_group_sync[completer->groups_completed++ & 1u];
  tsan_release(group);
#endif
  const bool shuffle = is_shuffle(leader->op);
  for (std::uint32_t m = need; m; m &= m - 1) {
    const int lane = std::countr_zero(m);
    Fiber* f = lane_fiber(b, warp, lane);
    f->result = shuffle ? shuffle_result(b, warp, lane, f, need) : common;
    f->acquire_group = group;
    set_bit(b.runnable, f->tid);
  }
  b.warp_waiting[warp] &= ~need;
}

SP_EMU_FIBER_CODE [[noreturn]] void fiber_exit(Block& b, Fiber* self) {
  self->wait = Wait::kExited;
  clear_bit(b.runnable, self->tid);
  --b.live;
  const int warp = self->tid >> 5;
  b.warp_gone[warp] |= 1u << (self->tid & 31);
  tsan_release(&b.tsan_block_end);
  // An exited thread counts as arrived at the barrier now in progress (and so, transitively, at
  // every later one). Only this generation's object: threads released from the previous barrier
  // but not yet resumed acquire the other one, and must not see what this thread did since.
  tsan_release(&b.tsan_barrier[b.barrier_gen & 1u]);
  if (b.failure == Failure::kNone) {
    if (b.arrived > 0 && b.arrived == b.live) release_barrier(b);
    for (std::uint32_t m = b.warp_waiting[warp]; m && b.failure == Failure::kNone; m &= m - 1) {
      const int lane = std::countr_zero(m);
      if ((b.warp_waiting[warp] >> lane) & 1u)
        try_complete_warp_op(b, warp, lane_fiber(b, warp, lane));
    }
  }
  int next = -1;
  if (b.failure == Failure::kNone) {
    next = pick_next(b, self->tid);
    if (next < 0 && b.live > 0) {
      b.failure = Failure::kDeadlock;
      b.failing_tid = self->tid;
    }
  }
  switch_context(b, self, next >= 0 ? b.fibers[next] : nullptr, true);
  std::abort();  // a finished fiber is never resumed
}

SP_EMU_FIBER_CODE [[noreturn]] void fiber_entry() {
  Block& b = g_block;
  Fiber* self = b.fibers[b.current];
#if SP_EMU_ASAN
  const void* bottom_old = nullptr;
  std::size_t size_old = 0;
  __sanitizer_finish_switch_fiber(nullptr, &bottom_old, &size_old);
  if (b.entering_from_main) {
    b.main.stack_bottom = bottom_old;
    b.main.stack_size = size_old;
  }
#endif
  b.entering_from_main = false;
  tsan_acquire(&b.tsan_block_start);
  try {
    b.thread_main(b.context);
  } catch (...) {
    if (b.failure == Failure::kNone) {
      b.failure = Failure::kException;
      b.failing_tid = self->tid;
      b.exception = std::current_exception();
    }
  }
  fiber_exit(b, self);
}

[[noreturn]] void outside_kernel(const char* what) {
  fail(ErrorKind::kInvalidArgument, what,
       " called outside a kernel: device functions only run inside SP_LAUNCH");
}

// Writes the frame sp_emu_switch_context pops, so the first switch "returns" into fiber_entry.
SP_EMU_FIBER_CODE void prepare_context(Fiber& f) {
#if SP_EMU_ASAN
  // The frames a fiber finished in (fiber_entry, fiber_exit, switch_context) never return, so
  // their redzones are still poisoned right where the new frames go. Kernel frames below them
  // returned normally and cleaned up after themselves.
  const std::size_t dirty = std::min<std::size_t>(f.stack_bytes, 16 * 1024);
  __asan_unpoison_memory_region(f.stack_lo + f.stack_bytes - dirty, dirty);
#endif
#if SP_EMU_ASM_SWITCH
  // Stack tops are staggered by 64 bytes per fiber: page-aligned tops would put every fiber's
  // hottest cache lines in the same few cache sets.
  auto top =
      reinterpret_cast<std::uintptr_t>(f.stack_lo + f.stack_bytes - f.color) & ~std::uintptr_t{15};
  auto* frame = reinterpret_cast<std::uint64_t*>(top) - 8;
  for (int i = 0; i < 6; ++i) frame[i] = 0;                  // r15 r14 r13 r12 rbx rbp
  frame[6] = reinterpret_cast<std::uint64_t>(&fiber_entry);  // "return" address
  frame[7] = 0;  // fiber_entry's own return address: ends backtraces, never used
  f.sp = frame;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack_lo;
  f.uc.uc_stack.ss_size = f.stack_bytes;
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, fiber_entry, 0);
#endif
}

// ---- the pool of fibers (stacks are allocated once and reused) ---------------------------

void destroy_pool() {
  for (auto& f : g_pool) {
#if SP_EMU_TSAN
    if (f->tsan_fiber) __tsan_destroy_fiber(f->tsan_fiber);
#endif
#if SP_EMU_ASAN
    // Abandoned frames leave poisoned shadow behind; the mapping may be handed out again.
    __asan_unpoison_memory_region(f->stack_lo, f->stack_bytes);
#endif
    if (f->mapping) munmap(f->mapping, f->mapping_bytes);
  }
  g_pool.clear();
}

void grow_pool(int n, std::size_t stack_bytes) {
  if (g_pool_stack_bytes != stack_bytes) {
    destroy_pool();
    g_pool_stack_bytes = stack_bytes;
  }
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t usable = (stack_bytes + page - 1) / page * page;
  while (static_cast<int>(g_pool.size()) < n) {
    auto f = std::make_unique<Fiber>();
    void* m = mmap(nullptr, usable + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      fail(ErrorKind::kInternal, "cuda-emu: cannot map ", usable,
           " bytes of fiber stack: ", std::strerror(errno));
    }
    // A guard page below each stack turns an overflow into a fault instead of silent
    // corruption of the neighbouring thread's stack.
    mprotect(m, page, PROT_NONE);
    f->mapping = m;
    f->mapping_bytes = usable + page;
    f->stack_lo = static_cast<char*>(m) + page;
    f->stack_bytes = usable;
    f->tid = static_cast<int>(g_pool.size());
    f->color = static_cast<std::size_t>(f->tid % 64) * 64;
#if SP_EMU_TSAN
    f->tsan_fiber = __tsan_create_fiber(0);
#endif
    g_pool.push_back(std::move(f));
  }
}

// ---- diagnosis ---------------------------------------------------------------------------

const char* warp_op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kSyncWarp:
      return "__syncwarp";
    case WarpOp::kShfl:
      return "__shfl_sync";
    case WarpOp::kShflUp:
      return "__shfl_up_sync";
    case WarpOp::kShflDown:
      return "__shfl_down_sync";
    case WarpOp::kShflXor:
      return "__shfl_xor_sync";
    case WarpOp::kBallot:
      return "__ballot_sync";
    case WarpOp::kAny:
      return "__any_sync";
    case WarpOp::kAll:
      return "__all_sync";
    case WarpOp::kReduceAddU:
    case WarpOp::kReduceAddI:
      return "__reduce_add_sync";
    case WarpOp::kReduceMinU:
    case WarpOp::kReduceMinI:
      return "__reduce_min_sync";
    case WarpOp::kReduceMaxU:
    case WarpOp::kReduceMaxI:
      return "__reduce_max_sync";
    case WarpOp::kReduceAnd:
      return "__reduce_and_sync";
    case WarpOp::kReduceOr:
      return "__reduce_or_sync";
    case WarpOp::kReduceXor:
      return "__reduce_xor_sync";
  }
  return "warp operation";
}

const char* barrier_name(BarrierOp op) {
  switch (op) {
    case BarrierOp::kSync:
      return "__syncthreads";
    case BarrierOp::kCount:
      return "__syncthreads_count";
    case BarrierOp::kAnd:
      return "__syncthreads_and";
    case BarrierOp::kOr:
      return "__syncthreads_or";
  }
  return "__syncthreads";
}

std::string where_text(const std::source_location& where) {
  std::string_view file = where.file_name();
  if (const auto slash = file.rfind('/'); slash != std::string_view::npos) {
    file.remove_prefix(slash + 1);
  }
  return str_cat(file, ":", where.line());
}

std::string hex_mask(unsigned int mask) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", mask);
  return buf;
}

std::string thread_state(const Block& b, const Fiber& f) {
  if (f.wait == Wait::kExited) return "exited";
  if ((b.runnable[f.tid >> 6] >> (f.tid & 63)) & 1u) {
    return f.wait == Wait::kRunning && f.where.line() == 0 ? "not started" : "runnable";
  }
  if (f.wait == Wait::kBarrier)
    return str_cat("wait in ", barrier_name(f.barrier_op), "() at ", where_text(f.where));
  if (f.wait == Wait::kWarp) {
    return str_cat("wait in ", warp_op_name(f.op), "(mask ", hex_mask(f.mask), ", ", f.size,
                   "-byte value) at ", where_text(f.where));
  }
  return "running";
}

std::string coords(const uint3& v) {
  return str_cat("(", v.x, ",", v.y, ",", v.z, ")");
}
std::string coords(const dim3& v) {
  return str_cat("(", v.x, ",", v.y, ",", v.z, ")");
}

std::string thread_table(const Block& b) {
  std::ostringstream out;
  int start = 0;
  while (start < b.n) {
    const std::string state = thread_state(b, *b.fibers[start]);
    int end = start;
    while (end + 1 < b.n && thread_state(b, *b.fibers[end + 1]) == state) ++end;
    out << "\n  threads " << start;
    if (end > start) out << "-" << end;
    out << " " << coords(b.fibers[start]->idx);
    if (end > start) out << "-" << coords(b.fibers[end]->idx);
    out << ": " << state;
    start = end + 1;
  }
  return out.str();
}

std::string describe_failure(const Block& b) {
  const detail::LaunchConfig& c = *b.config;
  const std::string where_run =
      str_cat("kernel '", c.kernel_name, "' (grid ", coords(c.grid), ", block ", coords(c.block),
              "), block ", coords(detail::g_block_idx), ", schedule ",
              schedule_name(ScheduleSpec{b.order, b.seed}));
  const Fiber* f = b.failing_tid >= 0 ? b.fibers[b.failing_tid] : nullptr;
  const std::string who = f ? str_cat("thread ", f->tid, " ", coords(f->idx), " (warp ",
                                      f->tid / 32, ", lane ", f->tid % 32, ")")
                            : std::string("?");
  switch (b.failure) {
    case Failure::kDeadlock:
      return str_cat("cuda-emu: deadlock in ", where_run,
                     ": every live thread waits and no barrier or warp operation can complete "
                     "(a __syncthreads in divergent code, or threads waiting in different "
                     "barriers):",
                     thread_table(b));
    case Failure::kWarpMismatch:
      return str_cat("cuda-emu: mismatched warp operations in warp ", f ? f->tid / 32 : -1, " of ",
                     where_run,
                     ": the live lanes named in a *_sync mask must all call the same operation "
                     "with the same mask and value type, and ",
                     who, " does not:", thread_table(b));
    case Failure::kBadMask:
      return str_cat("cuda-emu: ", who, " called ", warp_op_name(f->op), " with mask ",
                     hex_mask(f->mask), " at ", where_text(f->where),
                     ", which does not include the calling lane, in ", where_run);
    case Failure::kBadWidth:
      return str_cat("cuda-emu: ", who, " called ", warp_op_name(f->op), " with width ", f->width,
                     " at ", where_text(f->where), "; width must be a power of two in 1..32, in ",
                     where_run);
    case Failure::kTrap:
      return str_cat("cuda-emu: __trap() by ", who, " at ", where_text(b.failing_where), " in ",
                     where_run);
    case Failure::kException:
      return str_cat("cuda-emu: exception thrown by ", who, " in ", where_run);
    case Failure::kNone:
      break;
  }
  return "cuda-emu: no failure";
}

// After a failure, the fibers that were waiting never continue. Gives the launching thread
// happens-before with everything they did, then throws them away.
void recover_from_failure(Block& b) {
  tsan_acquire(&b.tsan_block_end);
  tsan_acquire(&b.tsan_barrier[0]);
  tsan_acquire(&b.tsan_barrier[1]);
  for (int i = 0; i < b.n; ++i) tsan_acquire(&b.fibers[i]->tsan_arrive_sync);
  destroy_pool();
}

// ---- running a block ---------------------------------------------------------------------

void run_block(Block& b, const uint3& block_idx, std::size_t smem_bytes) {
  detail::g_block_idx = block_idx;
  // Poison: reading dynamic shared memory nobody wrote gives NaN (any float type) or junk.
  for (std::size_t i = 0; i < smem_bytes; ++i) {
    b.smem[i] = (i & 1u) ? static_cast<unsigned char>(detail::kPoison16 >> 8)
                         : static_cast<unsigned char>(detail::kPoison16 & 0xffu);
  }
  const dim3 bd = b.config->block;
  for (int w = 0; w < kWords; ++w) {
    b.runnable[w] = 0;
    b.at_barrier[w] = 0;
  }
  for (int i = 0; i < b.n; ++i) set_bit(b.runnable, i);
  b.live = b.n;
  b.arrived = 0;
  b.pred_count = 0;
  b.barrier_gen = 0;
  for (int w = 0; w < b.nwarps; ++w) {
    b.warp_waiting[w] = 0;
    const int lanes = b.n - w * 32 >= 32 ? 32 : b.n - w * 32;
    b.warp_gone[w] = lanes == 32 ? 0u : ~((1u << lanes) - 1u);
  }
  b.failure = Failure::kNone;
  b.failing_tid = -1;
  for (int i = 0; i < b.n; ++i) {
    Fiber& f = *b.fibers[i];
    f.tid = i;
    f.idx = uint3{static_cast<unsigned>(i) % bd.x, (static_cast<unsigned>(i) / bd.x) % bd.y,
                  static_cast<unsigned>(i) / (bd.x * bd.y)};
    f.wait = Wait::kRunning;
    f.where = std::source_location();
    prepare_context(f);
#if SP_EMU_TSAN
    char name[160];
    // Coordinates first: ThreadSanitizer truncates long names.
    std::snprintf(name, sizeof name, "block(%u,%u,%u) thread(%u,%u,%u) of %s", block_idx.x,
                  block_idx.y, block_idx.z, f.idx.x, f.idx.y, f.idx.z, b.config->kernel_name);
    __tsan_set_fiber_name(f.tsan_fiber, name);
#endif
  }
  // Block start: everything the launcher did happens before every thread of the block.
  tsan_release(&b.tsan_block_start);
  const int first = pick_next(b, b.n - 1);
  b.entering_from_main = true;
  switch_context(b, nullptr, b.fibers[first], false);
  // Block end: every thread's work happens before the launcher continues.
  tsan_acquire(&b.tsan_block_end);
  b.current = -1;
}

void check_config(const detail::LaunchConfig& c) {
  const auto bad = [&](auto&&... why) {
    fail(ErrorKind::kInvalidArgument, "cuda-emu: invalid launch of kernel '", c.kernel_name,
         "' with grid ", coords(c.grid), ", block ", coords(c.block), ", ", c.dynamic_smem_bytes,
         " bytes of dynamic shared memory: ", why...);
  };
  if (c.block.x == 0 || c.block.y == 0 || c.block.z == 0) bad("block dimensions must be >= 1");
  if (c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64) {
    bad("block dimensions are limited to (1024, 1024, 64)");
  }
  const std::uint64_t threads = std::uint64_t{c.block.x} * c.block.y * c.block.z;
  if (threads > kMaxThreads) bad("a block has at most 1024 threads, this one has ", threads);
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0) bad("grid dimensions must be >= 1");
  if (c.grid.x > 2147483647u || c.grid.y > 65535u || c.grid.z > 65535u) {
    bad("grid dimensions are limited to (2147483647, 65535, 65535)");
  }
  if (c.dynamic_smem_bytes > kSmemOptInLimit) {
    bad("dynamic shared memory is limited to ", kSmemOptInLimit, " bytes per block");
  }
  if (c.dynamic_smem_bytes > kSmemDefaultLimit &&
      c.dynamic_smem_bytes > detail::smem_opt_in_bytes()) {
    bad("more than ", kSmemDefaultLimit,
        " bytes needs cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, "
        "bytes) first");
  }
}

struct AlignedBytes {
  unsigned char* p = nullptr;
  explicit AlignedBytes(std::size_t n)
      : p(static_cast<unsigned char*>(::operator new (n, std::align_val_t{256}))) {}
  ~AlignedBytes() { ::operator delete (p, std::align_val_t{256}); }
  AlignedBytes(const AlignedBytes&) = delete;
  AlignedBytes& operator=(const AlignedBytes&) = delete;
};

}  // namespace

// ---- public API --------------------------------------------------------------------------

void set_schedule(Schedule order, std::uint64_t seed) {
  set_schedule(ScheduleSpec{order, seed});
}

void set_schedule(const ScheduleSpec& spec) {
  load_environment();
  std::lock_guard lock(g_settings_mutex);
  g_settings.schedule = spec;
  g_settings.rng = spec.seed;
}

ScheduleSpec schedule() {
  load_environment();
  std::lock_guard lock(g_settings_mutex);
  return g_settings.schedule;
}

ScheduleSpec parse_schedule(std::string_view text) {
  if (text == "round_robin") return {Schedule::kRoundRobin, 0};
  if (text == "lowest_first") return {Schedule::kLowestFirst, 0};
  if (text == "highest_first") return {Schedule::kHighestFirst, 0};
  if (text == "random") return {Schedule::kRandom, 0};
  if (text.starts_with("random:") && text.size() > 7) {
    std::uint64_t seed = 0;
    bool ok = true;
    for (const char ch : text.substr(7)) {
      if (ch < '0' || ch > '9' || seed > (UINT64_MAX - 9) / 10) {
        ok = false;
        break;
      }
      seed = seed * 10 + static_cast<std::uint64_t>(ch - '0');
    }
    if (ok) return {Schedule::kRandom, seed};
  }
  fail(ErrorKind::kInvalidArgument, "SP_EMU_SCHEDULE='", text,
       "': expected round_robin, lowest_first, highest_first, random or random:SEED (SEED a "
       "decimal number)");
}

std::string schedule_name(const ScheduleSpec& spec) {
  switch (spec.order) {
    case Schedule::kRoundRobin:
      return "round_robin";
    case Schedule::kLowestFirst:
      return "lowest_first";
    case Schedule::kHighestFirst:
      return "highest_first";
    case Schedule::kRandom:
      return str_cat("random:", spec.seed);
  }
  return "?";
}

std::vector<ScheduleSpec> test_schedules() {
  return {{Schedule::kRoundRobin, 0}, {Schedule::kLowestFirst, 0}, {Schedule::kHighestFirst, 0},
          {Schedule::kRandom, 1},     {Schedule::kRandom, 2},      {Schedule::kRandom, 3}};
}

void set_on_error(OnError mode) {
  load_environment();
  std::lock_guard lock(g_settings_mutex);
  g_settings.on_error = mode;
}

OnError on_error() {
  load_environment();
  std::lock_guard lock(g_settings_mutex);
  return g_settings.on_error;
}

ExecStats exec_stats() {
  return ExecStats{g_stat_launches.load(), g_stat_blocks.load(), g_stat_threads.load(),
                   g_stat_switches.load()};
}

std::size_t fiber_stack_bytes() {
  load_environment();
  std::lock_guard lock(g_settings_mutex);
  return g_settings.stack_bytes;
}

bool in_kernel() {
  return t_launching && g_block.current >= 0;
}

namespace detail {

namespace {
std::atomic<std::size_t> g_smem_opt_in{0};
}  // namespace

void note_smem_opt_in(std::size_t bytes) {
  std::size_t cur = g_smem_opt_in.load();
  while (bytes > cur && !g_smem_opt_in.compare_exchange_weak(cur, bytes)) {
  }
}
std::size_t smem_opt_in_bytes() {
  return g_smem_opt_in.load();
}

SP_EMU_FIBER_CODE int barrier(BarrierOp op, int predicate, const std::source_location& where) {
  if (!t_launching || g_block.current < 0) outside_kernel(barrier_name(op));
  Block& b = g_block;
  Fiber* self = b.fibers[b.current];
  const std::uint32_t gen = b.barrier_gen;
  tsan_release(&b.tsan_barrier[gen & 1u]);
  self->wait = Wait::kBarrier;
  self->barrier_op = op;
  self->where = where;
  clear_bit(b.runnable, self->tid);
  set_bit(b.at_barrier, self->tid);
  ++b.arrived;
  b.pred_count += predicate != 0;
  if (b.arrived == b.live) release_barrier(b);
  yield_current(b, self);
  tsan_acquire(&b.tsan_barrier[gen & 1u]);
  self->wait = Wait::kRunning;
  const int count = b.result_count[gen & 1u];
  switch (op) {
    case BarrierOp::kSync:
      return 0;
    case BarrierOp::kCount:
      return count;
    case BarrierOp::kAnd:
      return count == b.result_total[gen & 1u];
    case BarrierOp::kOr:
      return count != 0;
  }
  return 0;
}

SP_EMU_FIBER_CODE std::uint64_t warp_exchange(const WarpRequest& r,
                                              const std::source_location& where) {
  if (!t_launching || g_block.current < 0) outside_kernel(warp_op_name(r.op));
  Block& b = g_block;
  Fiber* self = b.fibers[b.current];
  const int warp = self->tid >> 5;
  const int lane = self->tid & 31;
  self->wait = Wait::kWarp;
  self->where = where;
  self->op = r.op;
  self->mask = r.mask;
  self->bits = r.bits;
  self->poison = r.poison;
  self->size = r.size;
  self->arg = r.arg;
  self->width = r.width;
  if (!((r.mask >> lane) & 1u)) {
    b.failure = Failure::kBadMask;
    b.failing_tid = self->tid;
    fail_to_main(b, self);
  }
  if (r.width < 1 || r.width > 32 || (r.width & (r.width - 1)) != 0) {
    b.failure = Failure::kBadWidth;
    b.failing_tid = self->tid;
    fail_to_main(b, self);
  }
  tsan_release(&self->tsan_arrive_sync);
  clear_bit(b.runnable, self->tid);
  b.warp_waiting[warp] |= 1u << lane;
  try_complete_warp_op(b, warp, self);
  yield_current(b, self);
  if (self->acquire_group) tsan_acquire(self->acquire_group);
  self->wait = Wait::kRunning;
  return self->result;
}

SP_EMU_FIBER_CODE unsigned int active_mask() {
  if (!t_launching || g_block.current < 0) outside_kernel("__activemask");
  return ~g_block.warp_gone[g_block.current >> 5];
}

SP_EMU_FIBER_CODE void* dynamic_shared_memory() {
  if (!t_launching || g_block.current < 0) outside_kernel("dynamic shared memory");
  return g_block.smem;
}

SP_EMU_FIBER_CODE void trap(const std::source_location& where) {
  if (!t_launching || g_block.current < 0) outside_kernel("__trap");
  Block& b = g_block;
  b.failure = Failure::kTrap;
  b.failing_tid = b.current;
  b.failing_where = where;
  fail_to_main(b, b.fibers[b.current]);
}

void run_grid(const LaunchConfig& config, ThreadMain thread_main, void* context) {
  if (t_launching) {
    fail(ErrorKind::kUnsupported, "cuda-emu: kernel '", config.kernel_name,
         "' launched from inside a kernel; device-side launches are not emulated");
  }
  check_config(config);
  load_environment();
  land_pending_copies();  // the grid reads what earlier copies on its stream wrote

  std::unique_lock lock(g_launch_mutex);
  Settings settings;
  {
    std::lock_guard settings_lock(g_settings_mutex);
    settings = g_settings;
  }
  const dim3 bd = config.block;
  const int n = static_cast<int>(bd.x * bd.y * bd.z);
  grow_pool(n, settings.stack_bytes);
  AlignedBytes smem(config.dynamic_smem_bytes);

  Block& b = g_block;
  b.config = &config;
  b.thread_main = thread_main;
  b.context = context;
  b.order = settings.schedule.order;
  b.seed = settings.schedule.seed;
  b.rng = settings.rng;
  b.n = n;
  b.nwarps = (n + 31) / 32;
  for (int i = 0; i < n; ++i) b.fibers[i] = g_pool[static_cast<std::size_t>(i)].get();
  b.smem = smem.p;
  b.switches = 0;
  b.current = -1;
  b.exception = nullptr;
#if SP_EMU_TSAN
  b.main.tsan_fiber = __tsan_get_current_fiber();
#endif
  g_block_dim = config.block;
  g_grid_dim = config.grid;

  struct LaunchingFlag {
    LaunchingFlag() { t_launching = true; }
    ~LaunchingFlag() { t_launching = false; }
  } launching;

  std::uint64_t blocks = 0;
  for (unsigned z = 0; z < config.grid.z; ++z) {
    for (unsigned y = 0; y < config.grid.y; ++y) {
      for (unsigned x = 0; x < config.grid.x; ++x) {
        run_block(b, uint3{x, y, z}, config.dynamic_smem_bytes);
        ++blocks;
        if (b.failure == Failure::kNone) continue;

        const Failure failure = b.failure;
        std::string message = describe_failure(b);
        std::exception_ptr exception = std::move(b.exception);
        b.exception = nullptr;
        b.failure = Failure::kNone;
        recover_from_failure(b);
        {
          std::lock_guard settings_lock(g_settings_mutex);
          g_settings.rng = b.rng;
        }
        lock.unlock();
        if (failure == Failure::kException) {
          try {
            std::rethrow_exception(exception);
          } catch (const Error& e) {
            throw Error(e.kind(), str_cat(message, ": ", e.what()));
          }
        }
        if (settings.on_error == OnError::kThrow) throw Error(ErrorKind::kInternal, message);
        std::fprintf(stderr, "%s\n", message.c_str());
        std::fflush(stderr);
        std::abort();
      }
    }
  }
  {
    std::lock_guard settings_lock(g_settings_mutex);
    g_settings.rng = b.rng;
  }
  g_stat_launches.fetch_add(1, std::memory_order_relaxed);
  g_stat_blocks.fetch_add(blocks, std::memory_order_relaxed);
  g_stat_threads.fetch_add(blocks * static_cast<std::uint64_t>(n), std::memory_order_relaxed);
  g_stat_switches.fetch_add(b.switches, std::memory_order_relaxed);
}

}  // namespace detail
}  // namespace sp::emu
