// Learning-rate schedules as Hugging Face's get_*_schedule_with_warmup define them: linear
// warmup from 0, then constant, linear decay to 0, or cosine decay to 0.
#pragma once

#include <cstdint>
#include <string>

namespace sp {

/// The learning-rate schedules (all with linear warmup).
enum class Schedule { kConstant, kLinear, kCosine };

Schedule parse_schedule(const std::string& text);  ///< "constant" | "linear" | "cosine"
const char* schedule_name(Schedule schedule);

/// The multiplier of the base learning rate for optimizer step `step` (0-based) of `total`.
double schedule_factor(Schedule schedule, int64_t step, int64_t warmup_steps, int64_t total_steps);

}  // namespace sp
