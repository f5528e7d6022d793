// The engine's public API: Tensor, dtypes and devices, every differentiable op, the autograd
// tape (backward, NoGradGuard), AdamW, safetensors IO, sp::Error and warnings.
#pragma once

#include "engine/autograd.h"        // NoGradGuard, GradModeGuard, run_backward
#include "engine/device.h"          // Device::cpu(), Device::parse("cuda:0")
#include "engine/dtype.h"           // DType::F32 / BF16 / F16 / I32 / I64
#include "engine/error.h"           // sp::Error, ErrorKind, SP_CHECK
#include "engine/log.h"             // warn(), set_quiet(), set_warning_sink()
#include "engine/ops/checkpoint.h"  // activation checkpointing
#include "engine/ops/ops.h"         // matmul, add, mul, cross_entropy, index_select, mean, ...
#include "engine/optim/adamw.h"     // AdamW, clip_grad_norm
#include "engine/safetensors.h"     // SafetensorsFile, Checkpoint, save_safetensors
#include "engine/tensor.h"          // Tensor
