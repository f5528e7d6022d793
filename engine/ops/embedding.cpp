// Embedding gather and index_select with their scatter-add backward.
#include "engine/ops/embedding.h"

#include "engine/autograd.h"
#include "engine/ops/common.h"

namespace sp {

namespace {

void check_ids_in_range(const char* op, const Tensor& ids, int64_t rows, const Tensor& table) {
  for (int64_t id : ids.to_ints())
    SP_CHECK(id >= 0 && id < rows, op, ": index ", id, " is out of range for ", table.describe(),
             " (valid 0..", rows - 1, ")");
}

Tensor gather(const char* op, const Tensor& table_in, const Tensor& ids_in, Shape out_shape) {
  ops_detail::check_defined(op, {&table_in, &ids_in});
  ops_detail::check_index_tensor(op, ids_in, table_in);
  SP_CHECK(table_in.dim() >= 1, op, ": the table must have at least one dimension, got ",
           table_in.describe());
  Tensor table = table_in.contiguous();
  Tensor ids = ids_in.contiguous();
  const int64_t rows = table.size(0);
  check_ids_in_range(op, ids, rows, table);
  Tensor out = Tensor::empty(out_shape, table.dtype(), table.device());
  Shape flat_shape{ids.numel(), rows == 0 ? 0 : table.numel() / rows};
  if (out.numel() > 0)
    backend_for(table.device())
        .gather_rows(table.view({rows, flat_shape[1]}), ids, out.view(flat_shape));
  Shape table_shape = table.shape();
  record(out, op, {table_in}, [ids, table_shape, flat_shape](const Tensor& g, const NeedsGrad&) {
    Tensor d_table = Tensor::zeros(table_shape, g.dtype(), g.device());
    if (flat_shape[0] > 0)
      backend_for(g.device())
          .scatter_add_rows(g.contiguous().view(flat_shape), ids,
                            d_table.view({table_shape[0], flat_shape[1]}));
    return std::vector<Tensor>{d_table};
  });
  return out;
}

}  // namespace

Tensor embedding(const Tensor& table, const Tensor& ids) {
  SP_CHECK(table.dim() == 2, "embedding: the table must be [V, D], got ", table.describe());
  Shape out_shape = ids.shape();
  out_shape.push_back(table.size(1));
  return gather("embedding", table, ids, out_shape);
}

Tensor index_select(const Tensor& x, const Tensor& ids) {
  SP_CHECK(ids.dim() == 1, "index_select: ids must be 1-D, got ", ids.describe());
  Shape out_shape = x.shape();
  out_shape[0] = ids.numel();
  return gather("index_select", x, ids, out_shape);
}

}  // namespace sp
