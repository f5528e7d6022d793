// sp::Tokenizer (text <-> token ids, matching Hugging Face), load_tokenizer() for model
// directories, and the added-token / special-token machinery both implementations share.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sp {

/// Text <-> token ids with Hugging Face's results (byte-level BPE for GPT-2 / Llama 3 / Qwen2, BPE
/// with byte fallback for Llama 2 / Mistral, SentencePiece for T5). load_tokenizer() picks the
/// implementation from the model directory's files.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// add_special_tokens: T5 appends </s>; GPT-2 adds nothing (as HF).
  virtual std::vector<int64_t> encode(std::string_view text,
                                      bool add_special_tokens = true) const = 0;
  /// Text of `ids`; skip_special_tokens drops special added tokens (EOS, pad, ...).
  virtual std::string decode(std::span<const int64_t> ids,
                             bool skip_special_tokens = false) const = 0;
  virtual int64_t vocab_size() const = 0;  ///< including added/special tokens
  /// The end-of-sequence, padding and beginning-of-sequence ids, when the tokenizer has them.
  virtual std::optional<int64_t> eos_id() const = 0;
  virtual std::optional<int64_t> pad_id() const = 0;
  virtual std::optional<int64_t> bos_id() const = 0;
  /// The id of one vocabulary entry or added token, if present.
  virtual std::optional<int64_t> token_to_id(std::string_view token) const = 0;
  virtual std::string id_to_token(int64_t id) const = 0;  ///< throws for out-of-range ids
  virtual std::string kind() const = 0;                   ///< "byte-level BPE" / "SentencePiece"
};

/// Loads the tokenizer of a Hugging Face model directory. Which files decide the kind:
///   1. spiece.model -> SentencePiece (T5). A tokenizer.json next to it only contributes its
///      added_tokens (the sentinel ids); otherwise there are tokenizer_config.json "extra_ids"
///      sentinels, or as many as the special-token lists name, or 100 (T5Tokenizer's default).
///   2. tokenizer.json with model.type "BPE" -> BPE with byte fallback over characters
///      (BpeByteFallbackTokenizer: Llama 2, Mistral) when model.byte_fallback is true or a
///      component is of the SentencePiece kind (Metaspace, Prepend, ByteFallback); otherwise
///      byte-level BPE (BpeTokenizer: GPT-2, Llama 3, Qwen2). Any other model type is an error
///      naming the type.
///   3. vocab.json + merges.txt -> byte-level BPE (GPT-2).
/// tokenizer.json wins over vocab.json + merges.txt because AutoTokenizer (fast) prefers it too.
///
/// Named special tokens (bos/eos/unk/pad), first source that mentions the token wins:
///   tokenizer_config.json "<name>_token" (a string, an {"content": ...} object, or null = none)
///   > special_tokens_map.json "<name>_token"
///   > the family default (GPT-2: "<|endoftext|>" for bos/eos/unk when in the vocabulary, no pad;
///     T5: the pad/eos/unk pieces declared inside spiece.model; like T5Tokenizer, no bos)
///   > config.json "<name>_token_id" (transformers itself never reads it; last resort only).
/// Added tokens (split out of the text before the model runs): tokenizer.json "added_tokens", plus
/// the entries of tokenizer_config.json "added_tokens_decoder" and added_tokens.json whose ids are
/// not there yet. Every named special token becomes a special added token too (split out,
/// skippable in decode); so does every entry of "additional_special_tokens" /
/// "extra_special_tokens", except that an added token whose file says "special": false stays so.
/// Without tokenizer.json, tokenizer_config.json "add_bos_token" / "add_eos_token" put the BOS /
/// EOS id around every encoded GPT-2 text; with one, its post_processor decides (as transformers
/// 5). decode() skips ids at or above vocab_size() (and unassigned ids), as transformers does for
/// vocabularies padded past the tokenizer; negative ids are an error.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

// ---- Shared by the implementations (bpe_tokenizer.cpp, sentencepiece_tokenizer.cpp). ----
namespace tokenizer_detail {

struct AddedToken {
  int64_t id = -1;
  std::string content;
  bool special = false;  // skipped by decode(skip_special_tokens=true)
  bool lstrip = false;   // swallows the whitespace on its left
  bool rstrip = false;   // swallows the whitespace on its right
  // HF matches normalized tokens in a second pass, after the normalizer ran on the remaining
  // text; non-normalized ones are matched first, on the raw text.
  bool normalized = false;
  // Whether a file gave "special" for this token (tokenizer.json "added_tokens",
  // tokenizer_config.json "added_tokens_decoder"): transformers then keeps that flag even when
  // "extra_special_tokens" lists the token; named special tokens (bos/eos/unk/pad) are always
  // special.
  bool special_from_file = false;
};

// One piece of text after splitting on added tokens: either plain text or an added token.
struct TextPiece {
  std::string_view text;
  std::optional<int64_t> token_id;
};

// Finds added tokens in text the way the tokenizers library does: leftmost match first, the
// longest token among those starting there, no overlaps.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);
  bool empty() const { return nodes_.size() <= 1; }
  // Pieces cover `text` in order; empty plain-text pieces are omitted.
  std::vector<TextPiece> split(std::string_view text) const;

 private:
  struct Match {
    size_t begin, end;
    size_t token_index;
  };
  std::optional<Match> longest_at(std::string_view text, size_t pos) const;

  std::array<bool, 256> can_start_{};  // first bytes of the tokens: skips most positions cheaply

  struct Node {
    std::map<unsigned char, int32_t> children;
    int32_t token = -1;  // index into tokens_ when a token ends here
  };
  std::vector<Node> nodes_{Node{}};
  std::vector<AddedToken> tokens_;
};

// A special token named by the tokenizer files, before it is resolved against a vocabulary.
struct NamedToken {
  bool mentioned = false;              // some file has the key (maybe with null)
  std::optional<std::string> content;  // nullopt with mentioned = explicitly "no such token"
  std::string source;                  // "<file> field <key>", for error messages
};

// Everything the directory says about special tokens, independent of the tokenizer kind.
struct SpecialTokenSettings {
  NamedToken bos, eos, unk, pad;
  std::optional<int64_t> config_bos_id, config_eos_id, config_pad_id;   // config.json
  std::vector<std::pair<std::string, std::string>> additional_special;  // (content, source)
  std::vector<AddedToken> added_tokens_decoder;  // tokenizer_config.json "added_tokens_decoder"
  std::vector<AddedToken> legacy_added_tokens;   // added_tokens.json
  std::optional<int64_t> extra_ids;              // tokenizer_config.json "extra_ids"
  bool clean_up_tokenization_spaces = false;     // transformers 5 default
  std::optional<bool> add_prefix_space;          // tokenizer_config.json
  // tokenizer_config.json; transformers honours them only when there is no tokenizer.json.
  bool add_bos_token = false;
  bool add_eos_token = false;
  std::optional<bool> legacy;                  // tokenizer_config.json "legacy" (LlamaTokenizer)
  std::optional<std::string> tokenizer_class;  // tokenizer_config.json "tokenizer_class"
};

SpecialTokenSettings read_special_token_settings(const std::string& model_dir);

// tokenizer.json "added_tokens": [{"id", "content", "special", "lstrip", "rstrip", "normalized",
// "single_word"}, ...]. single_word=true is rejected (not implemented).
std::vector<AddedToken> parse_added_tokens(const nlohmann::json& list, const std::string& source);

// The added tokens of a tokenizer.json document: its "added_tokens", then those that only
// tokenizer_config.json "added_tokens_decoder" or added_tokens.json name (ids not seen yet).
std::vector<AddedToken> collect_added_tokens(const nlohmann::json& doc, const std::string& source,
                                             const SpecialTokenSettings& settings);

// Whether `added` holds token `id` with a "special" flag given by its file: transformers adds an
// "extra_special_tokens" entry only when it is not an added token yet, so that flag survives.
bool special_flag_from_file(const std::vector<AddedToken>& added, int64_t id);

// The ids a tokenizer.json TemplateProcessing "single" template puts around the sequence.
struct TemplateIds {
  std::vector<int64_t> prefix, suffix;
};
TemplateIds parse_template_processing(const nlohmann::json& post_processor,
                                      const std::string& source);

// What the tokenizer family itself supplies when no file names a special token.
struct NamedDefaults {
  std::optional<int64_t> bos, eos, unk, pad;
};
struct ResolvedSpecials {
  std::optional<int64_t> bos, eos, unk, pad;
};
// Applies the precedence documented at load_tokenizer(). lookup maps a token string to its id
// (nullopt when unknown); a named token that is unknown is an error naming the file and field.
ResolvedSpecials resolve_named_tokens(
    const SpecialTokenSettings& settings, const NamedDefaults& defaults, int64_t vocab_size,
    const std::function<std::optional<int64_t>(std::string_view)>& lookup);

// Makes every named special token and every "additional_special_tokens" entry a special added token
// (split out of the text, skippable in decode), as HF's all_special_tokens. vocab_token gives the
// vocabulary's text of an id, nullopt when the id is unassigned (an error naming `source`); a
// file's "special": false on an additional token survives.
void mark_special_tokens(std::vector<AddedToken>& added, const ResolvedSpecials& specials,
                         const SpecialTokenSettings& settings,
                         const std::function<std::optional<int64_t>(std::string_view)>& lookup,
                         const std::function<std::optional<std::string>(int64_t)>& vocab_token,
                         const std::string& source);

// Unicode White_Space (what Rust's char::is_whitespace and Oniguruma's \s use).
bool is_unicode_whitespace(char32_t c);
// Decodes the code point starting at text[pos] of valid UTF-8; advances pos.
char32_t next_code_point(std::string_view text, size_t& pos);
// Byte offset of the first invalid UTF-8 sequence, or nullopt when text is valid UTF-8.
std::optional<size_t> find_invalid_utf8(std::string_view text);
// Throws kInvalidArgument naming the byte offset when text is not valid UTF-8.
void require_valid_utf8(std::string_view text, std::string_view what);
// Replaces each maximal ill-formed subpart with U+FFFD, like Rust's String::from_utf8_lossy and
// Python's bytes.decode(errors="replace").
std::string replace_invalid_utf8(std::string_view bytes);
std::string encode_utf8(char32_t c);
// transformers' clean_up_tokenization (" ." -> ".", " n't" -> "n't", ...).
std::string clean_up_tokenization(std::string text);

}  // namespace tokenizer_detail
}  // namespace sp
