// BpeMerges: a BPE vocabulary's ranked merge table and the merge loop both BPE tokenizers run
// (lowest rank first, leftmost among equal ranks: Hugging Face tokenizers' order).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace sp {

class BpeMerges {
 public:
  /// Registers merge number `rank`: the pair (left, right) becomes `merged`. A pair given twice
  /// keeps the later entry, as the vocabulary's loaders always did.
  void add(int32_t left, int32_t right, int32_t rank, int32_t merged);
  /// The symbols of one word merged until no ranked pair remains.
  std::vector<int32_t> apply(const std::vector<int32_t>& symbols) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  std::unordered_map<uint64_t, Merge> merges_;  // key: (left id << 32) | right id
};

}  // namespace sp
