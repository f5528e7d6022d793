// DecodeBatch: right-aligned rows in one growing KV cache; joins, leaves, realignment, steps.
#include "models/decode_batch.h"

#include <algorithm>
#include <map>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/error.h"
#include "engine/ops/ops.h"

namespace sp {

namespace {

// Copies positions [from, from + count) of rows [0, rows) of every layer of `src` to positions
// [to, to + count) of `dst` (the same buffers when moving within a cache).
void copy_positions(const KvCache& src, int64_t from, const KvCache& dst, int64_t to, int64_t rows,
                    int64_t count, int64_t src_row = 0, int64_t dst_row = 0) {
  if (count == 0 || rows == 0) return;
  for (size_t layer = 0; layer < src.keys.size(); ++layer)
    for (const auto* buffers : {&src.keys, &src.values}) {
      const auto* targets = buffers == &src.keys ? &dst.keys : &dst.values;
      Tensor from_view =
          (*buffers)[layer].slice(0, src_row, src_row + rows).slice(1, from, from + count);
      Tensor to_view = (*targets)[layer].slice(0, dst_row, dst_row + rows).slice(1, to, to + count);
      // Overlapping moves inside one buffer go through a copy.
      if (&src == &dst) from_view = from_view.clone();
      backend_for(to_view.device()).copy(from_view, to_view);
    }
}

// A cache of rows x positions filled with zeros: masked positions still enter attention's
// matmuls, and zeros keep them finite.
KvCache zeroed_cache(const CausalLM& model, int64_t rows, int64_t positions) {
  KvCache cache = model.make_cache(rows, positions);
  for (size_t layer = 0; layer < cache.keys.size(); ++layer) {
    backend_for(cache.keys[layer].device()).fill(cache.keys[layer], 0.0f);
    backend_for(cache.values[layer].device()).fill(cache.values[layer], 0.0f);
  }
  return cache;
}

}  // namespace

RowKv extend_row(CausalLM& model, const RowKv* past, const Tensor& embeds) {
  return extend_rows(model, {past}, {embeds}).front();
}

std::vector<RowKv> extend_rows(CausalLM& model, const std::vector<const RowKv*>& pasts,
                               const std::vector<Tensor>& embeds) {
  NoGradGuard no_grad;
  const int64_t d = model.info().token_dim, J = int64_t(embeds.size());
  SP_CHECK(J > 0 && pasts.size() == embeds.size(), "extend_rows: ", pasts.size(), " pasts for ",
           embeds.size(), " rows");
  // Row r's past goes right-aligned before position P, its new positions right-aligned before
  // P + T; the gaps are masked, and explicit positions keep each row's numbering its own. A
  // sliding window counts distance in cache slots, so with one, a row whose past and new
  // positions would have a gap between them runs with the rows of its own new length.
  if (model.info().sliding_window > 0 && J > 1) {
    std::map<int64_t, std::vector<int64_t>> groups;  // new length (-1: no past) -> rows
    for (int64_t r = 0; r < J; ++r)
      groups[pasts[size_t(r)] ? embeds[size_t(r)].size(0) : -1].push_back(r);
    if (groups.size() > 1) {
      std::vector<RowKv> out(static_cast<size_t>(J));
      for (const auto& [length, rows] : groups) {
        std::vector<const RowKv*> group_pasts;
        std::vector<Tensor> group_embeds;
        for (int64_t r : rows) {
          group_pasts.push_back(pasts[size_t(r)]);
          group_embeds.push_back(embeds[size_t(r)]);
        }
        std::vector<RowKv> done = extend_rows(model, group_pasts, group_embeds);
        for (size_t i = 0; i < rows.size(); ++i) out[size_t(rows[i])] = std::move(done[i]);
      }
      return out;
    }
  }
  int64_t P = 0, T = 0;
  for (int64_t r = 0; r < J; ++r) {
    const Tensor& e = embeds[size_t(r)];
    SP_CHECK(e.dim() == 2 && e.size(1) == d && e.size(0) > 0,
             "extend_rows: embeddings must be [T, ", d, "] with T >= 1, got ", e.describe());
    if (pasts[size_t(r)]) P = std::max(P, pasts[size_t(r)]->length());
    T = std::max(T, e.size(0));
  }
  KvCache work = zeroed_cache(model, J, P + T);
  const DType dtype = work.keys.front().dtype();
  const Device device = model.device();
  std::vector<float> mask(size_t(J * (P + T)), 0.0f);
  std::vector<int64_t> positions(static_cast<size_t>(J * T), 0);
  std::vector<Tensor> rows;
  for (int64_t r = 0; r < J; ++r) {
    const int64_t before = pasts[size_t(r)] ? pasts[size_t(r)]->length() : 0;
    const int64_t added = embeds[size_t(r)].size(0);
    if (before > 0) copy_positions(pasts[size_t(r)]->cache, 0, work, P - before, 1, before, 0, r);
    std::fill_n(mask.begin() + r * (P + T) + (P - before), before, 1.0f);
    std::fill_n(mask.begin() + r * (P + T) + (P + T - added), added, 1.0f);
    for (int64_t k = 0; k < added; ++k) positions[size_t(r * T + (T - added) + k)] = before + k;
    Tensor row = embeds[size_t(r)].to(device).to(dtype);
    if (added < T) row = concat({Tensor::zeros({T - added, d}, dtype, device), row}, 0);
    rows.push_back(row.unsqueeze(0));
  }
  work.length = P;
  Tensor hidden = model.hidden_states(
      concat(rows, 0), Tensor::from_floats(mask, {J, P + T}, device),
      Tensor::from_ints(positions, {J, T}, DType::I64, device), &work, ForwardOptions{});
  // Each row's positions, gathered contiguous: its past, then its new positions.
  std::vector<RowKv> out(static_cast<size_t>(J));
  for (int64_t r = 0; r < J; ++r) {
    const int64_t before = pasts[size_t(r)] ? pasts[size_t(r)]->length() : 0;
    const int64_t added = embeds[size_t(r)].size(0);
    RowKv& row = out[size_t(r)];
    row.cache = model.make_cache(1, before + added);
    copy_positions(work, P - before, row.cache, 0, 1, before, r, 0);
    copy_positions(work, P + T - added, row.cache, before, 1, added, r, 0);
    row.cache.length = before + added;
    row.last_hidden = hidden.select(0, r).select(0, T - 1);
  }
  return out;
}

DecodeBatch::DecodeBatch(CausalLM& model, int64_t max_rows, int64_t capacity)
    : model_(model), max_rows_(max_rows), capacity_(capacity) {
  SP_CHECK(max_rows >= 1, "DecodeBatch: max_rows must be >= 1, got ", max_rows);
  SP_CHECK(capacity >= 2, "DecodeBatch: capacity must be >= 2, got ", capacity);
  const int64_t limit = model.info().max_positions;
  SP_CHECK(limit == 0 || capacity <= limit, "DecodeBatch: capacity ", capacity,
           " exceeds the model's ", limit, " positions");
}

int64_t DecodeBatch::slot_of(int64_t id) const {
  auto it = std::find(slot_ids_.begin(), slot_ids_.end(), id);
  SP_CHECK(it != slot_ids_.end(), "DecodeBatch: no row with id ", id);
  return int64_t(it - slot_ids_.begin());
}

int64_t DecodeBatch::length(int64_t id) const {
  return slot_lengths_[size_t(slot_of(id))];
}

int64_t DecodeBatch::longest_row() const {
  return slot_lengths_.empty() ? 0 : *std::max_element(slot_lengths_.begin(), slot_lengths_.end());
}

void DecodeBatch::reserve(int64_t row_count, int64_t positions) {
  if (row_count <= allocated_rows_ && positions <= allocated_positions_) return;
  // Each dimension doubles only when it is the one that ran out, so a wide batch of short rows
  // does not also get the whole context (64 rows x 1024 positions of GPT-2 small is 4.8 GB).
  auto grown_size = [](int64_t needed, int64_t allocated, int64_t minimum, int64_t limit) {
    if (needed <= allocated) return allocated;
    return std::min(limit, std::max({needed, 2 * allocated, minimum}));
  };
  const int64_t new_rows = grown_size(row_count, allocated_rows_, 1, max_rows_);
  const int64_t new_positions = grown_size(positions, allocated_positions_, 64, capacity_);
  KvCache grown = zeroed_cache(model_, new_rows, new_positions);
  copy_positions(cache_, 0, grown, 0, rows(), shared_length_);
  cache_ = std::move(grown);
  allocated_rows_ = new_rows;
  allocated_positions_ = new_positions;
}

void DecodeBatch::realign(int64_t new_length) {
  const int64_t longest = longest_row();
  SP_ASSERT(new_length >= longest && new_length <= capacity_);
  if (new_length == shared_length_) return;
  reserve(rows(), new_length);
  copy_positions(cache_, shared_length_ - longest, cache_, new_length - longest, rows(), longest);
  shared_length_ = new_length;
}

int64_t DecodeBatch::add(const RowKv& row) {
  NoGradGuard no_grad;
  SP_CHECK(!full(), "DecodeBatch: all ", max_rows_, " rows are taken");
  const int64_t length = row.length();
  SP_CHECK(length >= 1 && length < capacity_, "DecodeBatch: a row of ", length,
           " positions does not fit a capacity of ", capacity_, " (it needs room to grow)");
  if (rows() == 0) shared_length_ = 0;
  // Room for this row and the next step.
  reserve(rows() + 1, std::max(shared_length_, length) + 1);
  if (length > shared_length_) realign(length);
  const int64_t slot = rows();
  copy_positions(row.cache, 0, cache_, shared_length_ - length, 1, length, 0, slot);
  slot_ids_.push_back(next_id_);
  slot_lengths_.push_back(length);
  return next_id_++;
}

void DecodeBatch::remove(int64_t id) {
  NoGradGuard no_grad;
  const int64_t slot = slot_of(id), last = rows() - 1;
  if (slot != last) {
    const int64_t moved = slot_lengths_[size_t(last)];
    copy_positions(cache_, shared_length_ - moved, cache_, shared_length_ - moved, 1, moved, last,
                   slot);
    slot_ids_[size_t(slot)] = slot_ids_[size_t(last)];
    slot_lengths_[size_t(slot)] = moved;
  }
  slot_ids_.pop_back();
  slot_lengths_.pop_back();
  if (rows() == 0) {
    shared_length_ = 0;
    return;
  }
  // Attention spans the shared length: once a quarter of it is masked for every row, moving the
  // rows left (one copy) is cheaper than the steps that would attend over the gap.
  const int64_t gap = shared_length_ - longest_row();
  if (gap > 0 && 4 * gap >= shared_length_) realign(longest_row());
}

Tensor DecodeBatch::step(const std::vector<int64_t>& tokens) {
  NoGradGuard no_grad;
  const int64_t A = rows();
  SP_CHECK(A > 0 && int64_t(tokens.size()) == A, "DecodeBatch::step: ", tokens.size(),
           " tokens for ", A, " rows");
  if (shared_length_ + 1 > capacity_) {
    const int64_t longest = longest_row();
    SP_CHECK(longest < capacity_, "DecodeBatch::step: a row already fills the capacity of ",
             capacity_, " positions");
    realign(longest);
  }
  reserve(A, shared_length_ + 1);
  const int64_t L = shared_length_, total = L + 1;
  std::vector<float> mask(size_t(A * total), 0.0f);
  std::vector<int64_t> positions(static_cast<size_t>(A));
  for (int64_t s = 0; s < A; ++s) {
    const int64_t length = slot_lengths_[size_t(s)];
    std::fill(mask.begin() + s * total + (L - length), mask.begin() + (s + 1) * total, 1.0f);
    positions[size_t(s)] = length;
  }
  KvCache view;
  view.length = L;
  view.capacity = allocated_positions_;
  for (size_t layer = 0; layer < cache_.keys.size(); ++layer) {
    view.keys.push_back(cache_.keys[layer].slice(0, 0, A));
    view.values.push_back(cache_.values[layer].slice(0, 0, A));
  }
  const Device device = model_.device();
  Tensor embeds = model_.embed(Tensor::from_ints(tokens, {A, 1}, DType::I64, device));
  Tensor hidden = model_.hidden_states(embeds, Tensor::from_floats(mask, {A, total}, device),
                                       Tensor::from_ints(positions, {A, 1}, DType::I64, device),
                                       &view, ForwardOptions{});
  shared_length_ = total;
  for (int64_t& length : slot_lengths_) ++length;
  return hidden.select(1, 0);
}

}  // namespace sp
