// Continuous batching for causal LMs: rows join and leave a decode batch between steps; each
// row's keys/values sit right-aligned in one shared cache. RowKv is one row's cached prefix.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"
#include "models/causal_lm.h"

namespace sp {

/// Keys and values of one row's first positions (a batch-1 cache filled to `cache.length`),
/// and the final hidden state of its last position.
struct RowKv {
  KvCache cache;
  Tensor last_hidden;  ///< [d]; defined once the row has at least one position
  int64_t length() const { return cache.length; }
};

/// Runs `embeds` [T, d] as the positions after `past` (may be null: positions from 0) of one
/// row, returning the cache of all past + T positions. A soft prompt's RowKv does not depend on
/// the text that follows it, so a server computes it once per adapter and extends it per request.
RowKv extend_row(CausalLM& model, const RowKv* past, const Tensor& embeds);

/// extend_row for several rows in one forward (rows of other lengths are padded and masked):
/// the weights are read once for all of them, which is what a batch-1 prefill is bound by.
std::vector<RowKv> extend_rows(CausalLM& model, const std::vector<const RowKv*>& pasts,
                               const std::vector<Tensor>& embeds);

/// A decode batch whose rows join and leave between steps. Rows share one cache length L: row r
/// holds positions at [L - length_r, L), the rest of its cache row is masked out. A joining row
/// longer than L shifts the others right; when L reaches the capacity, or rows that left made the
/// masked gap large, the rows shift left. Buffers grow on demand up to max_rows x capacity.
class DecodeBatch {
 public:
  DecodeBatch(CausalLM& model, int64_t max_rows, int64_t capacity);

  /// Adds a row whose positions so far are `row` (1 <= length, length < capacity). Returns the
  /// row's id (stable until remove()).
  int64_t add(const RowKv& row);
  /// Drops a row; the last row moves into its slot.
  void remove(int64_t id);
  /// One new position per row: tokens[i] is the next input of row ids()[i]. Returns the final
  /// hidden states [rows, d] in that order. Every row must have room (length < capacity).
  Tensor step(const std::vector<int64_t>& tokens);

  int64_t rows() const { return int64_t(slot_ids_.size()); }
  bool full() const { return rows() == max_rows_; }
  int64_t capacity() const { return capacity_; }
  /// Row ids in slot order (the order step() takes tokens and returns hidden states).
  const std::vector<int64_t>& ids() const { return slot_ids_; }
  int64_t length(int64_t id) const;  ///< positions the row has so far
  int64_t shared_length() const { return shared_length_; }
  /// The buffers' current size (rows x positions); they grow on demand.
  int64_t allocated_rows() const { return allocated_rows_; }
  int64_t allocated_positions() const { return allocated_positions_; }

 private:
  int64_t slot_of(int64_t id) const;
  /// Moves every row so that the shared length becomes `new_length` (>= the longest row).
  void realign(int64_t new_length);
  /// Reallocates the buffers to hold at least `rows` x `positions`, keeping the contents.
  void reserve(int64_t row_count, int64_t positions);
  int64_t longest_row() const;

  CausalLM& model_;
  int64_t max_rows_, capacity_;
  KvCache cache_;  ///< [allocated rows, allocated positions, H, D] per layer
  int64_t allocated_rows_ = 0, allocated_positions_ = 0;
  int64_t shared_length_ = 0;
  std::vector<int64_t> slot_ids_, slot_lengths_;
  int64_t next_id_ = 0;
};

}  // namespace sp
