// sp::BpeByteFallbackTokenizer: SentencePiece-style BPE over UTF-8 characters with byte fallback
// (Llama 2, Mistral), loaded from a tokenizers tokenizer.json.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "models/bpe_merges.h"
#include "models/tokenizer.h"

namespace sp {

class BpeByteFallbackTokenizer final : public Tokenizer {
 public:
  // doc is the parsed tokenizer.json at source (used in error messages).
  static std::unique_ptr<BpeByteFallbackTokenizer> from_tokenizer_json(
      const nlohmann::json& doc, const std::string& source,
      const tokenizer_detail::SpecialTokenSettings& settings);

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const override;
  std::string decode(std::span<const int64_t> ids, bool skip_special_tokens = false) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::optional<int64_t> eos_id() const override { return specials_.eos; }
  std::optional<int64_t> pad_id() const override { return specials_.pad; }
  std::optional<int64_t> bos_id() const override { return specials_.bos; }
  std::optional<int64_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int64_t id) const override;
  std::string kind() const override { return "BPE with byte fallback"; }

  // One step of the tokenizer.json normalizer (Prepend / Replace) or decoder chain.
  struct Step {
    enum class Kind { kPrepend, kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
    std::string pattern, content;   // Replace: pattern -> content; Prepend / Strip: content
    int64_t start = 0, stop = 0;    // Strip: characters cut at each end
    bool drop_first_marks = false;  // Metaspace decoder: drop the marks of the first token
  };
  enum class Prepend { kAlways, kFirst, kNever };

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
  };
  using TokenIds = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

  BpeByteFallbackTokenizer() = default;
  std::string normalize(std::string_view text) const;
  // Pre-tokenizes one normalized piece; at_start: the piece begins the original text.
  void encode_piece(std::string_view piece, bool at_start, std::vector<int64_t>& out) const;
  void encode_word(std::string_view word, std::vector<int64_t>& out) const;

  TokenIds vocab_;                        // the model's vocabulary
  TokenIds token_to_id_;                  // vocabulary and added tokens
  std::vector<std::string> id_to_token_;  // "" for ids nobody uses
  std::vector<bool> id_used_;
  std::vector<bool> id_special_;
  BpeMerges merges_;
  std::array<int32_t, 256> byte_ids_{};  // id of "<0xNN>", -1 if absent
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  std::vector<Step> normalizer_;
  bool metaspace_ = false;  // pre_tokenizer Metaspace
  std::string metaspace_mark_;
  Prepend metaspace_prepend_ = Prepend::kAlways;
  bool metaspace_split_ = false;
  std::vector<Step> decoder_;
  tokenizer_detail::ResolvedSpecials specials_;
  tokenizer_detail::TemplateIds template_;
  tokenizer_detail::AddedTokenMatcher raw_matcher_;
  tokenizer_detail::AddedTokenMatcher normalized_matcher_;
};

}  // namespace sp
