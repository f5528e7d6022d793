// sp::BpeTokenizer: byte-level BPE (GPT-2, Llama 3, Qwen2: regex pre-tokenizer, bytes_to_unicode,
// rank-ordered merges), loaded from vocab.json + merges.txt or from a tokenizers tokenizer.json.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "models/bpe_merges.h"
#include "models/tokenizer.h"

namespace sp {

class BpeTokenizer final : public Tokenizer {
 public:
  // Words cached by default, as the tokenizers library does (it keeps 10,000).
  static constexpr size_t kDefaultCacheCapacity = 10000;

  static std::unique_ptr<BpeTokenizer> from_vocab_merges(
      const std::string& vocab_path, const std::string& merges_path,
      const tokenizer_detail::SpecialTokenSettings& settings);
  // doc is the parsed tokenizer.json at source (used in error messages).
  static std::unique_ptr<BpeTokenizer> from_tokenizer_json(
      const nlohmann::json& doc, const std::string& source,
      const tokenizer_detail::SpecialTokenSettings& settings);

  ~BpeTokenizer() override;

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const override;
  std::string decode(std::span<const int64_t> ids, bool skip_special_tokens = false) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::optional<int64_t> eos_id() const override { return specials_.eos; }
  std::optional<int64_t> pad_id() const override { return specials_.pad; }
  std::optional<int64_t> bos_id() const override { return specials_.bos; }
  std::optional<int64_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int64_t id) const override;
  std::string kind() const override { return "byte-level BPE"; }

  // Bounds the word cache; 0 disables it (and frees it). Safe while other threads encode.
  void set_cache_capacity(size_t words);
  size_t cached_words() const;

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
  };
  using TokenIds = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

  BpeTokenizer();
  // Shared by both loaders once vocab and merges are known. `source` names them in errors.
  void finish_loading(TokenIds vocab,
                      const std::vector<std::pair<std::string, std::string>>& merges,
                      const std::vector<std::string>& merge_sources,
                      std::vector<tokenizer_detail::AddedToken> added,
                      const tokenizer_detail::SpecialTokenSettings& settings,
                      const std::string& vocab_source);
  // tokenizer.json "pre_tokenizer": ByteLevel (GPT-2) or Sequence[Split(regex), ByteLevel] (Llama
  // 3, Qwen2).
  void read_pre_tokenizer(const nlohmann::json& doc, const std::string& source);
  void compile_pattern(const std::string& pattern, const std::string& source);
  static TokenIds parse_vocab(const nlohmann::json& vocab, const std::string& source);

  void encode_text(std::string_view text, std::vector<int64_t>& out) const;
  void encode_word(std::string_view word, std::vector<int64_t>& out) const;
  std::vector<int32_t> bpe(std::string_view word) const;

  TokenIds token_to_id_;                  // base vocabulary and added tokens
  std::vector<std::string> id_to_token_;  // "" for ids nobody uses
  std::vector<bool> id_used_;
  std::vector<std::string> id_bytes_;  // what each id decodes to before UTF-8 repair
  std::vector<bool> id_special_;       // skipped by decode(skip_special_tokens=true)
  BpeMerges merges_;
  std::array<int32_t, 256> byte_ids_{};  // id of each byte's symbol, -1 if absent
  std::optional<int32_t> unk_id_;        // model.unk_token for bytes missing from the vocab
  bool nfc_ = false;  ///< tokenizer.json normalizer NFC (Qwen2): applied before pre-tokenizing
  bool ignore_merges_ = false;  // model.ignore_merges: whole words found in vocab win
  bool add_prefix_space_ = false;
  bool use_regex_ = true;
  tokenizer_detail::ResolvedSpecials specials_;
  tokenizer_detail::TemplateIds template_;
  tokenizer_detail::AddedTokenMatcher raw_matcher_;         // non-normalized added tokens
  tokenizer_detail::AddedTokenMatcher normalized_matcher_;  // normalized ones (second pass)

  struct Regex;
  std::unique_ptr<Regex> regex_;

  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
  std::atomic<size_t> cache_capacity_{kDefaultCacheCapacity};
};

}  // namespace sp
