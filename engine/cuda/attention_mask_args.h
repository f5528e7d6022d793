// engine/cuda/attention_mask_args.h: sp::AttentionMask -> the kernels' AttentionMaskArgs, shared
// by the masked softmax and the fused attention launches.
#pragma once

#include "engine/backend.h"
#include "engine/cuda/launch.h"
#include "kernels/attention_mask.cuh"

namespace sp::SP_CUDA_NS {

inline AttentionMaskArgs attention_mask_args(const char* op, const AttentionMask& mask) {
  expect_dtype(op, DType::F32, {&mask.key_padding, &mask.bias});
  expect_contiguous(op, {&mask.key_padding, &mask.bias});
  AttentionMaskArgs args;
  args.scale = mask.scale;
  args.causal = mask.causal;
  args.query_offset = mask.query_offset;
  args.key_padding = const_ptr<float>(mask.key_padding);
  args.bias = const_ptr<float>(mask.bias);
  args.bias_per_batch = mask.bias.defined() && mask.bias.dim() == 4;
  args.sliding_window = mask.sliding_window;
  return args;
}

}  // namespace sp::SP_CUDA_NS
