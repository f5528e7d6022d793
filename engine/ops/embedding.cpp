// Embedding gather and index_select with their scatter-add backward.
#include "engine/ops/embedding.h"

#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops/common.h"

namespace sp {

namespace {

// The ids, range-checked, on the table's device, and when the table's gradient will be needed
// their grouping by destination row for the backward's scatter (in the same upload). Ids on the
// host are checked there for free and uploaded without waiting; ids already on the device are
// copied back to be checked, which makes the host wait for the device, so callers that built them
// on the host pass them as they are.
struct CheckedIds {
  Tensor on_device;
  RowGroups groups;  // undefined tensors when no gradient flows to the table
};

CheckedIds checked_ids(const char* op, const Tensor& ids_in, const Tensor& table,
                       bool needs_groups) {
  SP_CHECK(ids_in.dtype() == DType::I64 || ids_in.dtype() == DType::I32, op,
           ": indices must be I32 or I64, got ", ids_in.describe());
  SP_CHECK(ids_in.device().is_cpu() || ids_in.device() == table.device(), op, ": indices ",
           ids_in.describe(), " are neither on the host nor on the device of ", table.describe());
  const int64_t rows = table.size(0);
  Tensor ids = ids_in.contiguous();
  const std::vector<int64_t> values = ids.to_ints();
  for (int64_t id : values)
    SP_CHECK(id >= 0 && id < rows, op, ": index ", id, " is out of range for ", table.describe(),
             " (valid 0..", rows - 1, ")");
  CheckedIds checked;
  if (needs_groups)
    checked.groups = group_rows_by_destination(values, table.device(), &checked.on_device);
  else
    checked.on_device = ids.to(table.device());
  return checked;
}

// out[out_shape] = the table's rows at ids_on_device (already checked), with the backward that
// scatter-adds the gradient into those rows by `groups` (used only when the table needs one).
Tensor gather_rows_with_backward(const char* op, const Tensor& table_in,
                                 const Tensor& ids_on_device, const RowGroups& groups,
                                 const Shape& out_shape) {
  Tensor table = table_in.contiguous();
  const int64_t rows = table.size(0);
  Tensor out = Tensor::empty(out_shape, table.dtype(), table.device());
  const Shape flat_shape{ids_on_device.numel(), rows == 0 ? 0 : table.numel() / rows};
  if (out.numel() > 0)
    backend_for(table.device())
        .gather_rows(table.view({rows, flat_shape[1]}), ids_on_device, out.view(flat_shape));
  record(out, op, {table_in},
         [groups, table_shape = table.shape(), flat_shape](const Tensor& g, const NeedsGrad&) {
           Tensor d_table = Tensor::zeros(table_shape, g.dtype(), g.device());
           if (flat_shape[0] > 0 && flat_shape[1] > 0)
             backend_for(g.device())
                 .scatter_add_rows(g.contiguous().view(flat_shape), groups,
                                   d_table.view({table_shape[0], flat_shape[1]}));
           return std::vector<Tensor>{d_table};
         });
  return out;
}

void check_table(const char* op, const Tensor& table) {
  SP_CHECK(table.dim() >= 1, op, ": the table must have at least one dimension, got ",
           table.describe());
}

Tensor gather(const char* op, const Tensor& table, const Tensor& ids_in, const Shape& out_shape) {
  ops_detail::check_defined(op, {&table, &ids_in});
  check_table(op, table);
  const CheckedIds ids = checked_ids(op, ids_in, table, any_requires_grad({&table}));
  return gather_rows_with_backward(op, table, ids.on_device, ids.groups, out_shape);
}

// table rows at indices checked before (CheckedIndices): one gather; a backward to the table when
// the indices are distinct (their grouping is kept with them).
Tensor gather(const char* op, const Tensor& table, const CheckedIndices& ids,
              const Shape& out_shape) {
  ops_detail::check_defined(op, {&table, &ids.on_device()});
  check_table(op, table);
  SP_CHECK(!any_requires_grad({&table}) || ids.groups().targets.defined(), op, ": ",
           table.describe(),
           " needs a gradient, whose backward groups repeated indices on the host: pass host "
           "indices");
  SP_CHECK(!ids.ignored(), op, ": the indices allow an ignored value, which is no row to gather");
  SP_CHECK(ids.on_device().device() == table.device(), op, ": indices on ",
           ids.on_device().device().str(), ", table ", table.describe());
  SP_CHECK(ids.bound() <= table.size(0), op, ": indices checked against ", ids.bound(),
           " rows, table ", table.describe(), " has ", table.size(0));
  return gather_rows_with_backward(op, table, ids.on_device(), ids.groups(), out_shape);
}

// [*ids, D] for a [V, D] table.
Shape embedding_shape(const Tensor& table, const Shape& ids_shape) {
  SP_CHECK(table.dim() == 2, "embedding: the table must be [V, D], got ", table.describe());
  Shape out_shape = ids_shape;
  out_shape.push_back(table.size(1));
  return out_shape;
}

// x's shape with len(ids) rows, for 1-D ids.
Shape index_select_shape(const Tensor& x, const Tensor& ids) {
  SP_CHECK(ids.dim() == 1, "index_select: ids must be 1-D, got ", ids.describe());
  Shape out_shape = x.shape();
  out_shape[0] = ids.numel();
  return out_shape;
}

}  // namespace

Tensor embedding(const Tensor& table, const Tensor& ids) {
  return gather("embedding", table, ids, embedding_shape(table, ids.shape()));
}

Tensor index_select(const Tensor& x, const Tensor& ids) {
  return gather("index_select", x, ids, index_select_shape(x, ids));
}

Tensor embedding(const Tensor& table, const CheckedIndices& ids) {
  return gather("embedding", table, ids, embedding_shape(table, ids.on_device().shape()));
}

Tensor index_select(const Tensor& x, const CheckedIndices& ids) {
  return gather("index_select", x, ids, index_select_shape(x, ids.on_device()));
}

}  // namespace sp
