// CheckedIndices: the host check and the in-place upload.
#include "engine/ops/checked_indices.h"

#include <algorithm>
#include <vector>

#include "engine/backend.h"
#include "engine/error.h"

namespace sp {

namespace {

// The indices as I64 values, each checked; returns how many are not `ignored`.
int64_t check(const char* what, const std::vector<int64_t>& values, int64_t bound,
              std::optional<int64_t> ignored) {
  int64_t counted = 0;
  for (int64_t v : values) {
    if (ignored && v == *ignored) continue;
    SP_CHECK(v >= 0 && v < bound, what, ": index ", v, " is outside [0, ", bound, ")",
             ignored ? str_cat(" and is not the ignored value ", *ignored) : std::string());
    ++counted;
  }
  return counted;
}

std::vector<int64_t> host_values(const char* what, const Tensor& indices) {
  SP_CHECK(indices.defined() && indices.device().is_cpu() &&
               (indices.dtype() == DType::I64 || indices.dtype() == DType::I32),
           what, ": expected I32 or I64 indices on the host, got ",
           indices.defined() ? indices.describe() : std::string("an undefined tensor"));
  return indices.to_ints();
}

bool distinct(std::vector<int64_t> values) {
  std::sort(values.begin(), values.end());
  return std::adjacent_find(values.begin(), values.end()) == values.end();
}

}  // namespace

CheckedIndices::CheckedIndices(const char* what, const Tensor& indices, int64_t bound,
                               Device device, std::optional<int64_t> ignored)
    : what_(what), bound_(bound), ignored_(ignored) {
  SP_CHECK(bound >= 0, what, ": bound ", bound, " is negative");
  const std::vector<int64_t> values = host_values(what, indices);
  counted_ = check(what, values, bound, ignored);
  if (!ignored && distinct(values)) {
    Tensor flat;
    groups_ = group_rows_by_destination(values, device, &flat);
    on_device_ = flat.view(indices.shape());
  } else {
    on_device_ = Tensor::from_ints(values, indices.shape(), DType::I64).to(device);
  }
}

int64_t CheckedIndices::refill(const Tensor& indices) {
  SP_CHECK(on_device_.defined(), what_, ": refill of indices never made");
  SP_CHECK(indices.defined() && indices.shape() == on_device_.shape(), what_, ": refill with ",
           indices.defined() ? indices.describe() : std::string("an undefined tensor"),
           ", expected the shape ", on_device_.describe(), " was made with");
  const std::vector<int64_t> values = host_values(what_, indices);
  const int64_t counted = check(what_, values, bound_, ignored_);
  Backend& backend = backend_for(on_device_.device());
  if (groups_.targets.defined()) {
    // The grouping's buffer follows the indices in one allocation: both are written in one copy.
    SP_CHECK(distinct(values), what_,
             ": refill with repeated indices; these were made distinct, and a captured backward "
             "keeps the shape of their grouping");
    int64_t groups = 0;
    const std::vector<int64_t> packed = packed_row_groups(values, true, &groups);
    SP_ASSERT(groups == int64_t(values.size()));
    backend.copy_from_host(on_device_.raw_data(), packed.data(), packed.size() * sizeof(int64_t));
  } else {
    backend.copy_from_host(on_device_.raw_data(), values.data(), values.size() * sizeof(int64_t));
  }
  counted_ = counted;
  return counted;
}

}  // namespace sp
