// relative_position_bias op: validation and dispatch.
#include "engine/ops/relative_position_bias.h"

#include "engine/autograd.h"
#include "engine/ops/common.h"

namespace sp {

Tensor relative_position_bias(const Tensor& table_in, int64_t tq, int64_t tk, int64_t query_offset,
                              bool bidirectional, int64_t max_distance) {
  ops_detail::check_defined("relative_position_bias", {&table_in});
  ops_detail::check_float_inputs("relative_position_bias", {&table_in});
  SP_CHECK(table_in.dim() == 2, "relative_position_bias: table must be [buckets, heads], got ",
           table_in.describe());
  SP_CHECK(!table_in.requires_grad() || !grad_mode_enabled(),
           "relative_position_bias: the bias table is frozen; training it is not supported");
  const int64_t num_buckets = table_in.size(0), heads = table_in.size(1);
  SP_CHECK(num_buckets >= 2 && max_distance > 0,
           "relative_position_bias: need at least 2 buckets and a positive max distance");
  Tensor table = table_in.contiguous();
  Tensor out = Tensor::empty({heads, tq, tk}, table.dtype(), table.device());
  if (out.numel() > 0)
    backend_for(table.device())
        .relative_position_bias(table, query_offset, bidirectional, num_buckets, max_distance, out);
  return out;
}

}  // namespace sp
