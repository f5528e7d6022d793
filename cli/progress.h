// Progress display for training: a one-line bar on a terminal (step/total, loss, lr, tokens/s,
// ETA), plain log lines otherwise, nothing with --quiet.
#pragma once

#include <cstdint>

#include "peft/trainer.h"

namespace sp::cli {

class ProgressDisplay {
 public:
  ProgressDisplay(bool quiet, int64_t log_every);
  void operator()(const TrainEvent& event);
  void finish();

 private:
  bool quiet_;
  bool tty_;
  int64_t log_every_;
  bool bar_open_ = false;
};

}  // namespace sp::cli
