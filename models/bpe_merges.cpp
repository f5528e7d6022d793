// The BPE merge loop: a doubly linked list of symbols and a priority queue of candidate pairs.
#include "models/bpe_merges.h"

#include <functional>
#include <queue>
#include <tuple>

namespace sp {

namespace {

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

void BpeMerges::add(int32_t left, int32_t right, int32_t rank, int32_t merged) {
  merges_[pair_key(left, right)] = Merge{rank, merged};
}

std::vector<int32_t> BpeMerges::apply(const std::vector<int32_t>& ids) const {
  if (ids.empty()) return {};
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(ids.size());
  for (int32_t id : ids) {
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id, index - 1, index + 1, true});
  }
  symbols.back().next = -1;

  // Lowest rank first; equal ranks (the same pair several times) leftmost first. Entries go stale
  // when a neighbour merges; they are recognised by re-checking the pair when popped.
  using Candidate = std::tuple<int32_t, int32_t, int32_t, int32_t>;  // rank, pos, left, right
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto push_pair = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    auto found = merges_.find(pair_key(symbols[pos].id, symbols[next].id));
    if (found != merges_.end())
      queue.emplace(found->second.rank, pos, symbols[pos].id, symbols[next].id);
  };
  for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) push_pair(pos);
  while (!queue.empty()) {
    const auto [rank, pos, left, right] = queue.top();
    queue.pop();
    Symbol& symbol = symbols[pos];
    if (!symbol.alive || symbol.next < 0 || symbol.id != left || symbols[symbol.next].id != right)
      continue;
    Symbol& absorbed = symbols[symbol.next];
    symbol.id = merges_.at(pair_key(left, right)).merged_id;
    absorbed.alive = false;
    symbol.next = absorbed.next;
    if (absorbed.next >= 0) symbols[absorbed.next].prev = pos;
    push_pair(symbol.prev);
    push_pair(pos);
  }
  std::vector<int32_t> merged;
  for (int32_t pos = 0; pos >= 0; pos = symbols[pos].next) merged.push_back(symbols[pos].id);
  return merged;
}

}  // namespace sp
