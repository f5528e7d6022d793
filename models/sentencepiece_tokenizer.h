// sp::SentencePieceTokenizer: T5's Unigram tokenizer (spiece.model through libsentencepiece)
// with the <extra_id_N> sentinels and the text pipeline of transformers' T5Tokenizer.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "models/tokenizer.h"

namespace sp {

// transformers 5 builds T5's tokenizer as: split out added tokens -> "Precompiled" normalizer
// (spiece.model's charsmap, applied per grapheme cluster) -> WhitespaceSplit -> Metaspace("▁",
// prepend always, split) -> Unigram whose vocabulary also holds <pad>, </s>, <unk> and the
// sentinels -> append </s>. This class runs that pipeline. libsentencepiece loads and validates
// spiece.model and provides its pieces, scores and special ids; the normalizer and the Unigram
// search are the tokenizers library's, reimplemented, because libsentencepiece's own encode gives
// different ids on some inputs (see PrecompiledNormalizer and encode_unigram in the .cpp).
class SentencePieceTokenizer final : public Tokenizer {
 public:
  // T5Tokenizer's default number of sentinels when no file says otherwise.
  static constexpr int64_t kDefaultExtraIds = 100;

  // Reads model_dir/spiece.model, plus model_dir/tokenizer.json's added_tokens when present.
  static std::unique_ptr<SentencePieceTokenizer> load(
      const std::string& model_dir, const tokenizer_detail::SpecialTokenSettings& settings);
  ~SentencePieceTokenizer() override;

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const override;
  std::string decode(std::span<const int64_t> ids, bool skip_special_tokens = false) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::optional<int64_t> eos_id() const override { return specials_.eos; }
  std::optional<int64_t> pad_id() const override { return specials_.pad; }
  std::optional<int64_t> bos_id() const override { return specials_.bos; }
  std::optional<int64_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int64_t id) const override;
  std::string kind() const override { return "SentencePiece"; }

  int64_t piece_count() const { return piece_count_; }  // ids below this come from spiece.model
  int64_t extra_id_count() const { return extra_id_count_; }

 private:
  SentencePieceTokenizer();
  void encode_segment(std::string_view text, std::vector<int64_t>& out) const;
  void encode_word(std::string_view word, std::vector<int64_t>& out) const;
  void encode_unigram(std::string_view text, std::vector<int64_t>& out) const;
  void build_unigram(const std::vector<std::pair<std::string, int64_t>>& vocab);
  std::string normalize(std::string_view text) const;

  struct PrecompiledNormalizer;
  std::unique_ptr<PrecompiledNormalizer> normalizer_;

  int64_t piece_count_ = 0;
  int64_t extra_id_count_ = 0;
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_special_;
  std::unordered_map<std::string, int64_t> token_to_id_;
  tokenizer_detail::ResolvedSpecials specials_;
  tokenizer_detail::AddedTokenMatcher raw_matcher_;         // on the text as given
  tokenizer_detail::AddedTokenMatcher normalized_matcher_;  // after the charsmap
  // The Unigram model: a byte trie over the pieces (edge key = node << 8 | byte) and their scores.
  std::unordered_map<uint64_t, int32_t> trie_edges_;
  std::vector<int64_t> trie_token_;  // per trie node: the id of the piece ending there, or -1
  std::vector<double> scores_;
  double unk_score_ = 0.0;
  int64_t unk_id_ = 0;
  bool clean_up_tokenization_spaces_ = false;
};

}  // namespace sp
