// Learning-rate schedules.
#include "peft/schedule.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace sp {

Schedule parse_schedule(const std::string& text) {
  if (text == "constant") return Schedule::kConstant;
  if (text == "linear") return Schedule::kLinear;
  if (text == "cosine") return Schedule::kCosine;
  fail(ErrorKind::kInvalidArgument, "unknown schedule '", text,
       "': expected constant, linear or cosine");
}

const char* schedule_name(Schedule schedule) {
  switch (schedule) {
    case Schedule::kConstant: return "constant";
    case Schedule::kLinear: return "linear";
    case Schedule::kCosine: return "cosine";
  }
  return "?";
}

double schedule_factor(Schedule schedule, int64_t step, int64_t warmup_steps, int64_t total_steps) {
  if (step < warmup_steps) return double(step) / double(std::max<int64_t>(1, warmup_steps));
  if (schedule == Schedule::kConstant) return 1.0;
  const double progress = double(step - warmup_steps) /
                          double(std::max<int64_t>(1, total_steps - warmup_steps));
  if (schedule == Schedule::kLinear) return std::max(0.0, 1.0 - progress);
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
}

}  // namespace sp
