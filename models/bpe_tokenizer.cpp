// BpeTokenizer: loading (vocab.json + merges.txt or tokenizer.json), encoding and decoding.
#include "models/bpe_tokenizer.h"
#include "models/unicode_nfc.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <tuple>
#include <utility>

#include "engine/error.h"
#include "engine/input_file.h"

namespace sp {

using nlohmann::json;
using tokenizer_detail::AddedToken;

namespace {

// GPT-2's pre-tokenizer. \s and \S are spelled out as Unicode White_Space because that is what
// the tokenizers library's regex engine (Oniguruma) means by them; PCRE2 10.42 also counts
// U+180E and leaves out nothing else, so the explicit class keeps U+180E a non-space as in HF.
constexpr std::string_view kWhiteSpace =
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";

std::string gpt2_pattern() {
  const std::string ws(kWhiteSpace);
  return "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" + ws + "\\p{L}\\p{N}]+|[" + ws +
         "]+(?![^" + ws + "])|[" + ws + "]+";
}

// A tokenizers Split regex (Oniguruma syntax) in PCRE2 syntax. The two engines agree on what these
// patterns use (\p{..}, (?i:..), lookahead, {m,n}) except \s / \S, which are rewritten as the
// explicit White_Space class for the reason given at kWhiteSpace.
std::string oniguruma_to_pcre2(std::string_view pattern, const std::string& source) {
  const std::string ws(kWhiteSpace);
  std::string out;
  int class_depth = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[++i];
      if (next == 's') {
        out += class_depth > 0 ? ws : "[" + ws + "]";
      } else if (next == 'S') {
        if (class_depth > 0)
          fail(ErrorKind::kFormat, source, ": regex '", pattern,
               "' uses \\S inside a character class, which softprompt does not translate");
        out += "[^" + ws + "]";
      } else {
        out += c;
        out += next;
      }
      continue;
    }
    if (c == '[') ++class_depth;
    if (c == ']' && class_depth > 0) --class_depth;
    out += c;
  }
  return out;
}

// bytes_to_unicode(): printable Latin-1 bytes stand for themselves; the other 68 bytes get the
// code points U+0100, U+0101, ... in byte order, so every byte is a visible vocabulary symbol.
std::array<char32_t, 256> byte_to_char_table() {
  std::array<char32_t, 256> table{};
  char32_t next_extra = 256;
  for (int byte = 0; byte < 256; ++byte) {
    const bool printable =
        (byte >= 33 && byte <= 126) || (byte >= 161 && byte <= 172) || (byte >= 174 && byte <= 255);
    table[byte] = printable ? static_cast<char32_t>(byte) : next_extra++;
  }
  return table;
}

const std::array<char32_t, 256>& byte_to_char() {
  static const std::array<char32_t, 256> table = byte_to_char_table();
  return table;
}

// Inverse of byte_to_char for code points below 324; -1 elsewhere.
const std::array<int16_t, 324>& char_to_byte() {
  static const std::array<int16_t, 324> table = [] {
    std::array<int16_t, 324> inverse;
    inverse.fill(-1);
    const auto& forward = byte_to_char();
    for (int byte = 0; byte < 256; ++byte) inverse[forward[byte]] = static_cast<int16_t>(byte);
    return inverse;
  }();
  return table;
}

// Byte-level symbols back to bytes; a token with any character outside the byte alphabet is
// taken verbatim, which is what the tokenizers ByteLevel decoder does (added tokens included).
std::string token_to_bytes(std::string_view token) {
  std::string bytes;
  size_t pos = 0;
  const auto& inverse = char_to_byte();
  while (pos < token.size()) {
    const char32_t c = tokenizer_detail::next_code_point(token, pos);
    if (c >= inverse.size() || inverse[c] < 0) return std::string(token);
    bytes += static_cast<char>(inverse[c]);
  }
  return bytes;
}

std::string mapped_word(std::string_view word) {
  std::string symbols;
  for (const char c : word)
    symbols += tokenizer_detail::encode_utf8(byte_to_char()[static_cast<unsigned char>(c)]);
  return symbols;
}

// Words longer than this are encoded without the cache so that one huge input cannot pin memory.
constexpr size_t kMaxCachedWordBytes = 256;

struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

// One match-data block per thread, sized for group 0 only (the pattern has no captures).
pcre2_match_data* thread_match_data() {
  thread_local std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(
      pcre2_match_data_create(1, nullptr));
  if (!data) fail(ErrorKind::kInternal, "BpeTokenizer: out of memory for PCRE2 match data");
  return data.get();
}

const std::string& string_field_or_empty(const json& object, const char* key,
                                         const std::string& source) {
  static const std::string empty;
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return empty;
  if (!found->is_string())
    fail(ErrorKind::kFormat, source, ": field '", key, "' must be a string or null, found ",
         found->type_name());
  return found->get_ref<const std::string&>();
}

// "null" when doc[key] is absent or null, else its "type" string.
std::string component_type(const json& doc, const char* key, const std::string& source) {
  auto found = doc.find(key);
  if (found == doc.end() || found->is_null()) return "null";
  if (!found->is_object())
    fail(ErrorKind::kFormat, source, ": '", key, "' must be an object or null, found ",
         found->type_name());
  auto type = found->find("type");
  if (type == found->end() || !type->is_string())
    fail(ErrorKind::kFormat, source, ": '", key, "' has no string 'type' field");
  return type->get<std::string>();
}

bool optional_bool(const json& object, const char* key, bool fallback, const std::string& source) {
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return fallback;
  if (!found->is_boolean())
    fail(ErrorKind::kFormat, source, ": field '", key, "' must be true or false, found ",
         found->dump());
  return found->get<bool>();
}

}  // namespace

struct BpeTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

BpeTokenizer::BpeTokenizer() : regex_(std::make_unique<Regex>()) {
  compile_pattern(gpt2_pattern(), "the GPT-2 pattern");
}

void BpeTokenizer::compile_pattern(const std::string& pattern, const std::string& source) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    fail(ErrorKind::kFormat, source, ": the pre-tokenizer regex does not compile at offset ",
         error_offset, ": ", reinterpret_cast<const char*>(message), " (pattern '", pattern, "')");
  }
  if (regex_->code) pcre2_code_free(regex_->code);
  regex_->code = code;
  // JIT is an optimisation only: builds of PCRE2 without it fall back to the interpreter.
  pcre2_jit_compile(regex_->code, PCRE2_JIT_COMPLETE);
}

BpeTokenizer::~BpeTokenizer() = default;

BpeTokenizer::TokenIds BpeTokenizer::parse_vocab(const json& vocab, const std::string& source) {
  if (!vocab.is_object())
    fail(ErrorKind::kFormat, source, ": the vocabulary must be a JSON object {token: id}, found ",
         vocab.type_name());
  TokenIds ids;
  std::unordered_map<int64_t, std::string> owner_of_id;
  for (const auto& [token, value] : vocab.items()) {
    if (!value.is_number_integer())
      fail(ErrorKind::kFormat, source, ": token '", token, "' must map to an integer id, found ",
           value.type_name(), " ", value.dump());
    const int64_t id = value.get<int64_t>();
    if (id < 0 || id > std::numeric_limits<int32_t>::max())
      fail(ErrorKind::kFormat, source, ": token '", token, "' has id ", id,
           ", expected 0 <= id < 2^31");
    auto [previous, inserted] = owner_of_id.emplace(id, token);
    if (!inserted)
      fail(ErrorKind::kFormat, source, ": id ", id, " is used twice, by '", previous->second,
           "' and by '", token, "'");
    ids.emplace(token, static_cast<int32_t>(id));
  }
  return ids;
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_vocab_merges(
    const std::string& vocab_path, const std::string& merges_path,
    const tokenizer_detail::SpecialTokenSettings& settings) {
  std::unique_ptr<BpeTokenizer> tokenizer(new BpeTokenizer());
  TokenIds vocab = parse_vocab(read_json_file(vocab_path), vocab_path);

  LineReader in(merges_path);
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::string> sources;
  for (std::optional<std::string> next; (next = in.next());) {
    std::string& line = *next;
    const int64_t line_number = in.line_number();
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;  // blank lines (a trailing newline) carry no merge
    if (line_number == 1 && line.starts_with("#version")) continue;
    const size_t space = line.find(' ');
    const size_t parts = static_cast<size_t>(std::count(line.begin(), line.end(), ' ')) + 1;
    if (parts != 2 || space == 0 || space + 1 == line.size())
      fail(ErrorKind::kFormat, merges_path, " line ", line_number,
           ": expected exactly two symbols separated by one space, found '",
           tokenizer_detail::replace_invalid_utf8(line), "'");
    merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    sources.push_back(str_cat(merges_path, " line ", line_number));
  }

  std::vector<AddedToken> added = settings.added_tokens_decoder;
  added.insert(added.end(), settings.legacy_added_tokens.begin(),
               settings.legacy_added_tokens.end());
  tokenizer->add_prefix_space_ = settings.add_prefix_space.value_or(false);
  tokenizer->finish_loading(std::move(vocab), merges, sources, std::move(added), settings,
                            vocab_path);
  // Without tokenizer.json, transformers builds the post-processor from add_bos_token /
  // add_eos_token (a missing BOS / EOS token turns its flag off).
  if (settings.add_bos_token && tokenizer->specials_.bos)
    tokenizer->template_.prefix.push_back(*tokenizer->specials_.bos);
  if (settings.add_eos_token && tokenizer->specials_.eos)
    tokenizer->template_.suffix.push_back(*tokenizer->specials_.eos);
  return tokenizer;
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_tokenizer_json(
    const json& doc, const std::string& source,
    const tokenizer_detail::SpecialTokenSettings& settings) {
  std::unique_ptr<BpeTokenizer> tokenizer(new BpeTokenizer());
  if (!doc.is_object()) fail(ErrorKind::kFormat, source, ": expected a JSON object");
  auto model = doc.find("model");
  if (model == doc.end() || !model->is_object())
    fail(ErrorKind::kFormat, source, ": missing the 'model' object");
  const std::string model_source = source + ": model";
  const std::string& type = string_field_or_empty(*model, "type", model_source);
  if (!type.empty() && type != "BPE")
    fail(ErrorKind::kFormat, model_source, ".type is '", type, "', expected 'BPE'");
  auto vocab_field = model->find("vocab");
  if (vocab_field == model->end()) fail(ErrorKind::kFormat, model_source, " has no 'vocab'");
  TokenIds vocab = parse_vocab(*vocab_field, model_source + ".vocab");

  auto merges_field = model->find("merges");
  if (merges_field == model->end()) fail(ErrorKind::kFormat, model_source, " has no 'merges'");
  if (!merges_field->is_array())
    fail(ErrorKind::kFormat, model_source, ".merges must be a list, found ",
         merges_field->type_name());
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::string> sources;
  for (size_t i = 0; i < merges_field->size(); ++i) {
    const json& entry = (*merges_field)[i];
    const std::string where = str_cat(model_source, ".merges[", i, "]");
    // Both spellings exist: "a b" (older files, openai-community/gpt2) and ["a", "b"]
    // (tokenizers >= 0.20, which allows spaces inside symbols).
    if (entry.is_string()) {
      const std::string& text = entry.get_ref<const std::string&>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == text.size() ||
          text.find(' ', space + 1) != std::string::npos)
        fail(ErrorKind::kFormat, where, ": expected two symbols separated by one space, found '",
             text, "'");
      merges.emplace_back(text.substr(0, space), text.substr(space + 1));
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      merges.emplace_back(entry[0].get<std::string>(), entry[1].get<std::string>());
    } else {
      fail(ErrorKind::kFormat, where, ": expected \"a b\" or [\"a\", \"b\"], found ", entry.dump());
    }
    sources.push_back(where);
  }

  if (auto dropout = model->find("dropout");
      dropout != model->end() && !dropout->is_null() &&
      !(dropout->is_number() && dropout->get<double>() == 0.0))
    fail(ErrorKind::kFormat, model_source, ".dropout is ", dropout->dump(),
         "; BPE dropout is not supported (expected null)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!string_field_or_empty(*model, key, model_source).empty())
      fail(ErrorKind::kFormat, model_source, ".", key, " is set; only byte-level BPE without ", key,
           " is supported");
  }
  if (optional_bool(*model, "byte_fallback", false, model_source))
    fail(ErrorKind::kFormat, model_source,
         ".byte_fallback is true; only byte-level BPE (byte_fallback false) is supported");
  tokenizer->ignore_merges_ = optional_bool(*model, "ignore_merges", false, model_source);
  const std::string& unk = string_field_or_empty(*model, "unk_token", model_source);
  if (!unk.empty()) {
    auto found = vocab.find(unk);
    if (found == vocab.end())
      fail(ErrorKind::kFormat, model_source, ".unk_token '", unk, "' is not in the vocabulary");
    tokenizer->unk_id_ = found->second;
  }

  if (const std::string type = component_type(doc, "normalizer", source); type == "NFC")
    tokenizer->nfc_ = true;  // Qwen2
  else if (type != "null")
    fail(ErrorKind::kFormat, source, ": field 'normalizer': unsupported normalizer type '", type,
         "' for byte-level BPE (supported: null, NFC)");
  tokenizer->read_pre_tokenizer(doc, source);
  // Who decides add_prefix_space depends on the class transformers instantiates: GPT2Tokenizer
  // builds its own pre-tokenizer from its keyword (tokenizer_config.json, default false), while
  // the generic TokenizersBackend keeps tokenizer.json's and ignores the keyword.
  const std::string cls = settings.tokenizer_class.value_or("");
  if (cls == "GPT2Tokenizer" || cls == "GPT2TokenizerFast") {
    tokenizer->add_prefix_space_ = settings.add_prefix_space.value_or(false);
  } else if (!cls.empty() && cls != "PreTrainedTokenizerFast" && cls != "TokenizersBackend" &&
             settings.add_prefix_space) {
    // Other classes are not checked against transformers; the keyword overrides as before.
    tokenizer->add_prefix_space_ = *settings.add_prefix_space;
  }
  if (const std::string type = component_type(doc, "decoder", source);
      type != "null" && type != "ByteLevel")
    fail(ErrorKind::kFormat, source, ": unsupported decoder type '", type,
         "' (supported: ByteLevel)");
  if (auto post = doc.find("post_processor"); post != doc.end())
    tokenizer->template_ = tokenizer_detail::parse_template_processing(*post, source);

  std::vector<AddedToken> added = tokenizer_detail::collect_added_tokens(doc, source, settings);
  tokenizer->finish_loading(std::move(vocab), merges, sources, std::move(added), settings,
                            model_source + ".vocab");
  return tokenizer;
}

void BpeTokenizer::read_pre_tokenizer(const json& doc, const std::string& source) {
  const std::string type = component_type(doc, "pre_tokenizer", source);
  const json* byte_level = nullptr;
  const json* split = nullptr;
  if (type == "ByteLevel") {
    byte_level = &doc["pre_tokenizer"];
  } else if (type == "Sequence") {
    // Llama 3 / Qwen2: Split(regex, Isolated) then ByteLevel(use_regex=false).
    const json& sequence = doc["pre_tokenizer"];
    auto found = sequence.find("pretokenizers");
    if (found == sequence.end() || !found->is_array())
      fail(ErrorKind::kFormat, source,
           ": field 'pre_tokenizer.pretokenizers' must be a list, found ",
           found == sequence.end() ? std::string("nothing") : found->dump());
    const json& list = *found;
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string where = str_cat(source, ": pre_tokenizer.pretokenizers[", i, "]");
      const std::string inner =
          list[i].is_object() && list[i].contains("type") && list[i]["type"].is_string()
              ? list[i]["type"].get<std::string>()
              : std::string("(no type)");
      if (inner == "Split" && !split && !byte_level) {
        split = &list[i];
      } else if (inner == "ByteLevel" && !byte_level) {
        byte_level = &list[i];
      } else {
        fail(ErrorKind::kFormat, where, ": unsupported pre_tokenizer type '", inner,
             "' at this position (supported: an optional Split followed by ByteLevel)");
      }
    }
    if (!byte_level)
      fail(ErrorKind::kFormat, source,
           ": pre_tokenizer Sequence has no ByteLevel step, which byte-level BPE needs");
  } else {
    fail(ErrorKind::kFormat, source, ": field 'pre_tokenizer': unsupported pre_tokenizer type '",
         type, "' for byte-level BPE (supported: ByteLevel, Sequence[Split, ByteLevel])");
  }
  add_prefix_space_ = optional_bool(*byte_level, "add_prefix_space", false, source);
  use_regex_ = optional_bool(*byte_level, "use_regex", true, source);
  if (!split) return;
  const std::string where = source + ": pre_tokenizer Split";
  if (use_regex_)
    fail(ErrorKind::kFormat, where,
         " is followed by ByteLevel with use_regex true; only use_regex false is supported there");
  if (add_prefix_space_)
    fail(ErrorKind::kFormat, where,
         " is followed by ByteLevel with add_prefix_space true; only false is supported there");
  const std::string& behavior = string_field_or_empty(*split, "behavior", where);
  if (behavior != "Isolated")
    fail(ErrorKind::kFormat, where, ": field 'behavior' is '", behavior,
         "', expected 'Isolated' (the only behaviour softprompt implements)");
  if (optional_bool(*split, "invert", false, where))
    fail(ErrorKind::kFormat, where, ": field 'invert' is true, expected false");
  auto pattern = split->find("pattern");
  if (pattern == split->end() || !pattern->is_object() || !pattern->contains("Regex") ||
      !(*pattern)["Regex"].is_string())
    fail(ErrorKind::kFormat, where, ": field 'pattern' must be {\"Regex\": \"...\"}, found ",
         pattern == split->end() ? std::string("nothing") : pattern->dump());
  compile_pattern(oniguruma_to_pcre2((*pattern)["Regex"].get<std::string>(), where), where);
  use_regex_ = true;  // the Split regex takes the place of ByteLevel's own
}

void BpeTokenizer::finish_loading(TokenIds vocab,
                                  const std::vector<std::pair<std::string, std::string>>& merges,
                                  const std::vector<std::string>& merge_sources,
                                  std::vector<AddedToken> added,
                                  const tokenizer_detail::SpecialTokenSettings& settings,
                                  const std::string& vocab_source) {
  // Ids may leave gaps, but not more unused ids than there are tokens: a stray huge id must not
  // make us allocate billions of entries.
  const auto id_limit = static_cast<int64_t>(vocab.size() + added.size());
  int64_t size = 0;
  for (const auto& [token, id] : vocab) {
    if (id >= id_limit)
      fail(ErrorKind::kFormat, vocab_source, ": token '", token, "' has id ", id, ", expected < ",
           id_limit, " (the number of tokens)");
    size = std::max<int64_t>(size, int64_t{id} + 1);
  }
  for (const AddedToken& token : added) {
    if (token.id >= id_limit)
      fail(ErrorKind::kFormat, vocab_source, ": added token '", token.content, "' has id ",
           token.id, ", expected < ", id_limit, " (the number of tokens)");
    size = std::max(size, token.id + 1);
  }
  id_to_token_.assign(static_cast<size_t>(size), std::string());
  id_used_.assign(static_cast<size_t>(size), false);
  id_special_.assign(static_cast<size_t>(size), false);
  for (const auto& [token, id] : vocab) {
    id_to_token_[id] = token;
    id_used_[id] = true;
  }

  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& [left, right] = merges[i];
    const auto id_of = [&](const std::string& symbol, const char* role) {
      auto found = vocab.find(symbol);
      if (found == vocab.end())
        fail(ErrorKind::kFormat, merge_sources[i], ": ", role, " '", symbol,
             "' is not in the vocabulary (", vocab_source, ")");
      return found->second;
    };
    const int32_t left_id = id_of(left, "symbol");
    const int32_t right_id = id_of(right, "symbol");
    const int32_t merged_id = id_of(left + right, "merged symbol");
    // A repeated merge keeps its last rank, as both HF implementations build a map from the list.
    merges_.add(left_id, right_id, static_cast<int32_t>(i), merged_id);
  }
  for (int byte = 0; byte < 256; ++byte) {
    auto found = vocab.find(tokenizer_detail::encode_utf8(byte_to_char()[byte]));
    byte_ids_[byte] = found == vocab.end() ? -1 : found->second;
  }
  token_to_id_ = std::move(vocab);

  // Named special tokens: GPT2Tokenizer's defaults are "<|endoftext|>" for bos, eos and unk.
  const auto lookup = [&](std::string_view token) -> std::optional<int64_t> {
    for (const AddedToken& a : added)
      if (a.content == token) return a.id;
    auto found = token_to_id_.find(token);
    if (found == token_to_id_.end()) return std::nullopt;
    return found->second;
  };
  tokenizer_detail::NamedDefaults defaults;
  if (auto endoftext = lookup("<|endoftext|>"))
    defaults.bos = defaults.eos = defaults.unk = endoftext;
  specials_ = tokenizer_detail::resolve_named_tokens(settings, defaults, size, lookup);

  tokenizer_detail::mark_special_tokens(
      added, specials_, settings, lookup,
      [&](int64_t id) -> std::optional<std::string> {
        if (!id_used_[size_t(id)]) return std::nullopt;
        return id_to_token_[size_t(id)];
      },
      vocab_source);

  std::vector<AddedToken> raw, normalized;
  for (const AddedToken& token : added) {
    if (token.id < 0 || token.id >= size) continue;  // cannot happen: size covers every id
    const auto id = static_cast<size_t>(token.id);
    id_to_token_[id] = token.content;  // the added vocabulary wins over the model's, as in HF
    id_used_[id] = true;
    id_special_[id] = id_special_[id] || token.special;
    token_to_id_.emplace(token.content, static_cast<int32_t>(token.id));
    (token.normalized ? normalized : raw).push_back(token);
  }
  raw_matcher_ = tokenizer_detail::AddedTokenMatcher(raw);
  normalized_matcher_ = tokenizer_detail::AddedTokenMatcher(normalized);

  id_bytes_.resize(id_to_token_.size());
  for (size_t id = 0; id < id_to_token_.size(); ++id)
    if (id_used_[id]) id_bytes_[id] = token_to_bytes(id_to_token_[id]);
  for (const auto& [prefix_or_suffix, name] :
       {std::pair{&template_.prefix, "prefix"}, std::pair{&template_.suffix, "suffix"}}) {
    for (int64_t id : *prefix_or_suffix)
      if (id >= size || !id_used_[static_cast<size_t>(id)])
        fail(ErrorKind::kFormat, vocab_source, ": post_processor ", name, " id ", id,
             " is not a token of the vocabulary");
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding

std::vector<int64_t> BpeTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  tokenizer_detail::require_valid_utf8(text, "BpeTokenizer::encode");
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids.insert(ids.end(), template_.prefix.begin(), template_.prefix.end());
  for (const auto& piece : raw_matcher_.split(text)) {
    if (piece.token_id) {
      ids.push_back(*piece.token_id);
      continue;
    }
    // Added tokens match the raw text first, then the normalized rest (tokenizers' two passes).
    const std::string normalized = nfc_ ? to_nfc(piece.text) : std::string();
    for (const auto& inner : normalized_matcher_.split(nfc_ ? std::string_view(normalized)
                                                            : std::string_view(piece.text))) {
      if (inner.token_id) {
        ids.push_back(*inner.token_id);
      } else {
        encode_text(inner.text, ids);
      }
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), template_.suffix.begin(), template_.suffix.end());
  return ids;
}

void BpeTokenizer::encode_text(std::string_view segment, std::vector<int64_t>& out) const {
  std::string with_prefix;
  if (add_prefix_space_ && !segment.starts_with(' ')) {
    with_prefix = " ";
    with_prefix.append(segment);
    segment = with_prefix;
  }
  if (!use_regex_) {
    encode_word(segment, out);
    return;
  }
  pcre2_match_data* match_data = thread_match_data();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(segment.data());
  size_t offset = 0;
  while (offset < segment.size()) {
    const int rc = pcre2_match(regex_->code, subject, segment.size(), offset, PCRE2_NO_UTF_CHECK,
                               match_data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) {
      encode_word(segment.substr(offset), out);
      return;
    }
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      fail(ErrorKind::kInvalidArgument, "BpeTokenizer::encode: pre-tokenizer regex failed at byte ",
           offset, ": ", reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data);
    const size_t begin = ovector[0];
    size_t end = ovector[1];
    // Text between matches stays a word of its own (tokenizers' Split "Isolated" behaviour).
    if (begin > offset) encode_word(segment.substr(offset, begin - offset), out);
    if (end == begin) {
      // Patterns that match empty (none of the shipped ones) still make progress.
      size_t next = begin;
      tokenizer_detail::next_code_point(segment, next);
      end = next;
    }
    encode_word(segment.substr(begin, end - begin), out);
    offset = end;
  }
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int64_t>& out) const {
  const bool cacheable =
      word.size() <= kMaxCachedWordBytes && cache_capacity_.load(std::memory_order_relaxed) > 0;
  if (cacheable) {
    std::shared_lock lock(cache_mutex_);
    auto found = cache_.find(word);
    if (found != cache_.end()) {
      out.insert(out.end(), found->second.begin(), found->second.end());
      return;
    }
  }
  std::vector<int32_t> ids = bpe(word);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::unique_lock lock(cache_mutex_);
    const size_t capacity = cache_capacity_.load(std::memory_order_relaxed);
    if (capacity == 0) return;
    // Bounded: a full cache starts over rather than growing or refusing new words forever.
    if (cache_.size() >= capacity) cache_.clear();
    cache_.emplace(std::string(word), std::move(ids));
  }
}

std::vector<int32_t> BpeTokenizer::bpe(std::string_view word) const {
  if (ignore_merges_) {
    auto whole = token_to_id_.find(mapped_word(word));
    if (whole != token_to_id_.end()) return {whole->second};
  }
  std::vector<int32_t> symbols;
  symbols.reserve(word.size());
  for (const char c : word) {
    int32_t id = byte_ids_[static_cast<unsigned char>(c)];
    if (id < 0) {
      if (!unk_id_) continue;  // the tokenizers BPE drops unknown symbols when it has no unk
      id = *unk_id_;
    }
    symbols.push_back(id);
  }
  return merges_.apply(symbols);
}

// ---------------------------------------------------------------------------------------------
// Decoding and vocabulary access

std::string BpeTokenizer::decode(std::span<const int64_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    if (id < 0)
      fail(ErrorKind::kInvalidArgument, "BpeTokenizer::decode: ids[", i, "] = ", id,
           " is negative; expected a token id in [0, ", vocab_size(), ")");
    // Ids the tokenizer does not know (a model's embedding padded past the vocabulary) decode to
    // nothing, as in transformers.
    if (id >= vocab_size() || !id_used_[static_cast<size_t>(id)]) continue;
    if (skip_special_tokens && id_special_[static_cast<size_t>(id)]) continue;
    bytes += id_bytes_[static_cast<size_t>(id)];
  }
  // One repair over the whole byte string, so a token split across ids still decodes, and a
  // special token between two halves leaves each half a replacement character (as HF).
  // No clean_up_tokenization_spaces: transformers 5 ignores it for every BPE model.
  return tokenizer_detail::replace_invalid_utf8(bytes);
}

std::optional<int64_t> BpeTokenizer::token_to_id(std::string_view token) const {
  auto found = token_to_id_.find(token);
  if (found == token_to_id_.end()) return std::nullopt;
  return found->second;
}

std::string BpeTokenizer::id_to_token(int64_t id) const {
  if (id < 0 || id >= vocab_size() || !id_used_[static_cast<size_t>(id)])
    fail(ErrorKind::kInvalidArgument, "BpeTokenizer::id_to_token: id ", id,
         id < 0 || id >= vocab_size() ? " is out of range [0, " : " is not assigned in [0, ",
         vocab_size(), ")");
  return id_to_token_[static_cast<size_t>(id)];
}

void BpeTokenizer::set_cache_capacity(size_t words) {
  std::unique_lock lock(cache_mutex_);
  cache_capacity_.store(words, std::memory_order_relaxed);
  if (cache_.size() > words) cache_.clear();
  if (words == 0) decltype(cache_)().swap(cache_);
}

size_t BpeTokenizer::cached_words() const {
  std::shared_lock lock(cache_mutex_);
  return cache_.size();
}

}  // namespace sp
