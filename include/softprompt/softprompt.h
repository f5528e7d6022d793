// softprompt: prompt tuning of frozen GPT-2 / T5 models in C++, compatible with Hugging Face PEFT.
// Include this one header to get the whole public API (tensors, models, PEFT, training).
#pragma once

/// \mainpage softprompt
/// A C++20 engine and trainer for prompt tuning. The public API lives in namespace sp:
/// - tensors, ops, autograd and AdamW: <softprompt/tensor.h>
/// - Hugging Face GPT-2 / T5 models, tokenizers and generation: <softprompt/models.h>
/// - PEFT configs, prompt adapters and PeftModel: <softprompt/peft.h>
/// - data, evaluation, schedules and the Trainer: <softprompt/training.h>
///
/// docs/api.md walks these types in the order a user meets them; examples/ holds worked
/// training loops.

#include "softprompt/models.h"
#include "softprompt/peft.h"
#include "softprompt/tensor.h"
#include "softprompt/training.h"
#include "softprompt/version.h"
