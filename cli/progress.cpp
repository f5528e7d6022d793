// Progress bar and log lines.
#include "cli/progress.h"

#include <unistd.h>

#include <cstdio>
#include <string>

namespace sp::cli {

namespace {

std::string clock_text(double seconds) {
  if (seconds < 0 || seconds > 360000) return "--:--";
  int s = int(seconds + 0.5);
  char text[32];
  if (s >= 3600)
    std::snprintf(text, sizeof text, "%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(text, sizeof text, "%d:%02d", s / 60, s % 60);
  return text;
}

}  // namespace

ProgressDisplay::ProgressDisplay(bool quiet, int64_t log_every)
    : quiet_(quiet), tty_(isatty(STDERR_FILENO) == 1), log_every_(log_every > 0 ? log_every : 10) {}

void ProgressDisplay::operator()(const TrainEvent& e) {
  if (quiet_) return;
  switch (e.kind) {
    case TrainEvent::Kind::kStep: {
      const double eta = e.step > 0 ? e.elapsed_seconds / double(e.step) * double(e.total_steps - e.step) : -1;
      if (tty_) {
        const int width = 24;
        int filled = e.total_steps > 0 ? int(width * e.step / e.total_steps) : 0;
        std::string bar = std::string(size_t(filled), '#') + std::string(size_t(width - filled), '.');
        std::fprintf(stderr, "\r  step %lld/%lld [%s] loss %.4f  lr %.2e  %.0f tok/s  ETA %s   ",
                     (long long)e.step, (long long)e.total_steps, bar.c_str(), e.loss, e.lr,
                     e.tokens_per_second, clock_text(eta).c_str());
        bar_open_ = true;
      } else if (e.step % log_every_ == 0 || e.step == e.total_steps || e.step == 1) {
        std::fprintf(stderr, "step %lld/%lld loss %.4f lr %.3e grad_norm %.3f tokens/s %.0f elapsed %s\n",
                     (long long)e.step, (long long)e.total_steps, e.loss, e.lr, e.grad_norm,
                     e.tokens_per_second, clock_text(e.elapsed_seconds).c_str());
      }
      break;
    }
    case TrainEvent::Kind::kEval:
      finish();
      std::fprintf(stderr, "eval at step %lld: loss %.4f accuracy %.2f%% (%lld examples)\n",
                   (long long)e.step, e.eval.loss, 100.0 * e.eval.accuracy, (long long)e.eval.examples);
      break;
    case TrainEvent::Kind::kCheckpoint:
      if (!tty_) std::fprintf(stderr, "%s\n", e.message.c_str());
      break;
    case TrainEvent::Kind::kDone: finish(); break;
  }
  std::fflush(stderr);
}

void ProgressDisplay::finish() {
  if (bar_open_) std::fprintf(stderr, "\n");
  bar_open_ = false;
}

}  // namespace sp::cli
