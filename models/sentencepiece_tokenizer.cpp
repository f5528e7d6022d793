// SentencePieceTokenizer: spiece.model loading, sentinel ids, T5Tokenizer's encode/decode pipeline.
#include "models/sentencepiece_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <utility>

#include "engine/error.h"
#include "engine/input_file.h"

namespace sp {

using nlohmann::json;
using tokenizer_detail::AddedToken;

namespace {

constexpr std::string_view kMetaSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's word marker

// ---- Just enough protobuf wire format to read what libsentencepiece does not expose. ----
// Field numbers (sentencepiece_model.proto): ModelProto.trainer_spec = 2, .normalizer_spec = 3;
// TrainerSpec.model_type = 3, .byte_fallback = 35; NormalizerSpec.precompiled_charsmap = 2.
struct ProtoField {
  uint64_t number = 0;
  uint32_t wire_type = 0;
  uint64_t varint = 0;       // wire type 0
  std::string_view payload;  // wire type 2
};

bool read_varint(std::string_view data, size_t& pos, uint64_t& value) {
  value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos >= data.size()) return false;
    const auto byte = static_cast<unsigned char>(data[pos++]);
    value |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

std::optional<std::vector<ProtoField>> parse_proto(std::string_view data) {
  std::vector<ProtoField> fields;
  size_t pos = 0;
  while (pos < data.size()) {
    uint64_t tag = 0;
    if (!read_varint(data, pos, tag)) return std::nullopt;
    ProtoField field;
    field.number = tag >> 3;
    field.wire_type = static_cast<uint32_t>(tag & 7);
    if (field.number == 0) return std::nullopt;
    switch (field.wire_type) {
      case 0:
        if (!read_varint(data, pos, field.varint)) return std::nullopt;
        break;
      case 1:
        if (data.size() - pos < 8) return std::nullopt;
        pos += 8;
        break;
      case 2: {
        uint64_t length = 0;
        if (!read_varint(data, pos, length) || length > data.size() - pos) return std::nullopt;
        field.payload = data.substr(pos, static_cast<size_t>(length));
        pos += static_cast<size_t>(length);
        break;
      }
      case 5:
        if (data.size() - pos < 4) return std::nullopt;
        pos += 4;
        break;
      default:
        return std::nullopt;  // groups are not used by sentencepiece_model.proto
    }
    fields.push_back(field);
  }
  return fields;
}

// The fields of every occurrence of an embedded message (protobuf merges repeated occurrences).
std::vector<ProtoField> submessage_fields(const std::vector<ProtoField>& fields, uint64_t number,
                                          const std::string& source) {
  std::vector<ProtoField> inner;
  for (const ProtoField& field : fields) {
    if (field.number != number) continue;
    auto parsed = field.wire_type == 2 ? parse_proto(field.payload) : std::nullopt;
    if (!parsed)
      fail(ErrorKind::kFormat, source, ": field ", number, " of the model is not a valid message");
    inner.insert(inner.end(), parsed->begin(), parsed->end());
  }
  return inner;
}

std::optional<uint64_t> last_varint(const std::vector<ProtoField>& fields, uint64_t number) {
  std::optional<uint64_t> value;
  for (const ProtoField& field : fields)
    if (field.number == number && field.wire_type == 0) value = field.varint;
  return value;
}

std::unique_ptr<sentencepiece::SentencePieceProcessor> make_processor(std::string_view serialized,
                                                                      const std::string& source) {
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = processor->LoadFromSerializedProto(serialized);
  if (!status.ok())
    fail(ErrorKind::kFormat, source, ": not a valid SentencePiece model: ", status.ToString());
  return processor;
}

std::optional<int64_t> extra_id_number(std::string_view token) {
  static const std::regex pattern("<extra_id_([0-9]+)>");
  std::match_results<std::string_view::const_iterator> match;
  if (!std::regex_match(token.begin(), token.end(), match, pattern)) return std::nullopt;
  if (match[1].length() > 9) return std::nullopt;  // far beyond any vocabulary
  return std::stoll(match[1].str());
}

// ---- Extended grapheme clusters (Unicode UAX #29), as the unicode-segmentation crate that the
// tokenizers library uses finds them. PCRE2 10.42's \X is not used: it joins "™©" and splits
// U+0600 (Prepend) from a following pictograph, both unlike UAX #29. PCRE2 still supplies the
// Unicode properties. The Indic conjunct rule GB9c (Unicode 15.1) is left out, so a conjunct is
// cut after its linker; the normalizer only notices when the part after the cut is shorter than
// 6 bytes and starts with a character that has a charsmap rule (e.g. U+0958 then U+0301).

enum class BreakClass {
  kOther,
  kCR,
  kLF,
  kControl,
  kExtend,
  kZwj,
  kRegionalIndicator,
  kPrepend,
  kSpacingMark,
  kL,
  kV,
  kT,
  kLV,
  kLVT,
};

struct CodePointClass {
  BreakClass kind = BreakClass::kOther;
  bool pictographic = false;  // Extended_Pictographic
};

// Groups: 1 Extend, 2 Extended_Pictographic, 3 spacing mark (Mc), 4 control.
pcre2_code* property_pattern() {
  static pcre2_code* const code = [] {
    const std::string_view pattern =
        "([\\p{Grapheme_Extend}\\x{1F3FB}-\\x{1F3FF}])|(\\p{Extended_Pictographic})|(\\p{Mc})|"
        "([\\p{Cc}\\p{Cf}\\p{Zl}\\p{Zp}])";
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    pcre2_code* compiled =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                      PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &error_code, &error_offset, nullptr);
    if (!compiled)
      fail(ErrorKind::kInternal, "SentencePieceTokenizer: the property pattern does not compile");
    pcre2_jit_compile(compiled, PCRE2_JIT_COMPLETE);
    return compiled;
  }();
  return code;
}

struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

pcre2_match_data* thread_match_data() {
  thread_local std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(
      pcre2_match_data_create(5, nullptr));
  if (!data) fail(ErrorKind::kInternal, "SentencePieceTokenizer: out of memory for match data");
  return data.get();
}

bool in_ranges(char32_t c, std::initializer_list<std::pair<char32_t, char32_t>> ranges) {
  for (const auto& [low, high] : ranges)
    if (c >= low && c <= high) return true;
  return false;
}

// Grapheme_Cluster_Break of the code point c starting at text[at].
CodePointClass classify(std::string_view text, size_t at, char32_t c) {
  if (c < 0x80) {
    if (c == '\r') return {BreakClass::kCR};
    if (c == '\n') return {BreakClass::kLF};
    if (c < 0x20 || c == 0x7F) return {BreakClass::kControl};
    return {};
  }
  if (c == 0x200D) return {BreakClass::kZwj};
  if (in_ranges(c, {{0x0600, 0x0605},
                    {0x06DD, 0x06DD},
                    {0x070F, 0x070F},
                    {0x0890, 0x0891},
                    {0x08E2, 0x08E2},
                    {0x0D4E, 0x0D4E},
                    {0x110BD, 0x110BD},
                    {0x110CD, 0x110CD},
                    {0x111C2, 0x111C3},
                    {0x1193F, 0x1193F},
                    {0x11941, 0x11941},
                    {0x11A3A, 0x11A3A},
                    {0x11A84, 0x11A89},
                    {0x11D46, 0x11D46},
                    {0x11F02, 0x11F02}}))
    return {BreakClass::kPrepend};
  if (in_ranges(c, {{0x1100, 0x115F}, {0xA960, 0xA97C}})) return {BreakClass::kL};
  if (in_ranges(c, {{0x1160, 0x11A7}, {0xD7B0, 0xD7C6}})) return {BreakClass::kV};
  if (in_ranges(c, {{0x11A8, 0x11FF}, {0xD7CB, 0xD7FB}})) return {BreakClass::kT};
  if (c >= 0xAC00 && c <= 0xD7A3)
    return {(c - 0xAC00) % 28 == 0 ? BreakClass::kLV : BreakClass::kLVT};
  if (c >= 0x1F1E6 && c <= 0x1F1FF) return {BreakClass::kRegionalIndicator};
  if (c == 0x0E33 || c == 0x0EB3) return {BreakClass::kSpacingMark};
  pcre2_match_data* match_data = thread_match_data();
  const int rc = pcre2_match(property_pattern(), reinterpret_cast<PCRE2_SPTR>(text.data()),
                             text.size(), at, PCRE2_NO_UTF_CHECK, match_data, nullptr);
  if (rc <= 1) return {};
  const PCRE2_SIZE* groups = pcre2_get_ovector_pointer(match_data);
  const auto matched = [&](int group) { return rc > group && groups[2 * group] != PCRE2_UNSET; };
  if (matched(1)) return {BreakClass::kExtend};
  if (matched(2)) return {BreakClass::kOther, true};
  // Spacing marks that UAX #29 deliberately keeps apart (Myanmar, Tai Tham, Tai Viet, Ahom).
  if (matched(3) && !in_ranges(c, {{0x102B, 0x102C},
                                   {0x1038, 0x1038},
                                   {0x1062, 0x1064},
                                   {0x1067, 0x106D},
                                   {0x1083, 0x1083},
                                   {0x1087, 0x108C},
                                   {0x108F, 0x108F},
                                   {0x109A, 0x109C},
                                   {0x1A61, 0x1A61},
                                   {0x1A63, 0x1A64},
                                   {0xAA7B, 0xAA7B},
                                   {0xAA7D, 0xAA7D},
                                   {0x11720, 0x11721}}))
    return {BreakClass::kSpacingMark};
  if (matched(4)) return {BreakClass::kControl};
  return {};
}

// End of the extended grapheme cluster that starts at pos (text is valid UTF-8).
size_t grapheme_end(std::string_view text, size_t pos) {
  using enum BreakClass;
  size_t cursor = pos;
  CodePointClass left = classify(text, pos, tokenizer_detail::next_code_point(text, cursor));
  // GB11 needs the cluster to end in "ExtPict Extend* ZWJ" before a pictograph joins it.
  enum class Emoji { kNone, kPictographExtends, kPictographExtendsZwj };
  Emoji emoji = left.pictographic ? Emoji::kPictographExtends : Emoji::kNone;
  int regional_indicators = left.kind == kRegionalIndicator ? 1 : 0;
  while (cursor < text.size()) {
    size_t next = cursor;
    const CodePointClass right =
        classify(text, cursor, tokenizer_detail::next_code_point(text, next));
    bool join;
    if (left.kind == kCR && right.kind == kLF) {
      join = true;  // GB3
    } else if (left.kind == kCR || left.kind == kLF || left.kind == kControl || right.kind == kCR ||
               right.kind == kLF || right.kind == kControl) {
      join = false;  // GB4, GB5
    } else if ((left.kind == kL && (right.kind == kL || right.kind == kV || right.kind == kLV ||
                                    right.kind == kLVT)) ||
               ((left.kind == kLV || left.kind == kV) && (right.kind == kV || right.kind == kT)) ||
               ((left.kind == kLVT || left.kind == kT) && right.kind == kT)) {
      join = true;  // GB6, GB7, GB8: Hangul syllable sequences
    } else if (right.kind == kExtend || right.kind == kZwj || right.kind == kSpacingMark ||
               left.kind == kPrepend) {
      join = true;  // GB9, GB9a, GB9b
    } else if (emoji == Emoji::kPictographExtendsZwj && right.pictographic) {
      join = true;  // GB11
    } else if (left.kind == kRegionalIndicator && right.kind == kRegionalIndicator) {
      join = regional_indicators % 2 == 1;  // GB12, GB13: flags are pairs
    } else {
      join = false;  // GB999
    }
    if (!join) return cursor;
    if (right.pictographic) {
      emoji = Emoji::kPictographExtends;
    } else if (emoji == Emoji::kPictographExtends && right.kind == kZwj) {
      emoji = Emoji::kPictographExtendsZwj;
    } else if (!(emoji == Emoji::kPictographExtends && right.kind == kExtend)) {
      emoji = Emoji::kNone;
    }
    regional_indicators = right.kind == kRegionalIndicator ? regional_indicators + 1 : 0;
    left = right;
    cursor = next;
  }
  return cursor;
}

}  // namespace

// The tokenizers library's "Precompiled" normalizer, which transformers uses for T5 instead of
// libsentencepiece's. It reads the same charsmap (a darts-clone double-array trie over UTF-8
// followed by the NUL-terminated replacement strings) but applies it differently:
//   * text is cut into grapheme clusters; a cluster shorter than 6 bytes is looked up whole, and
//     the SHORTEST rule that is a prefix of it replaces the entire cluster (so "ﬁ" + U+0301 gives
//     "fi" and U+3000 + U+0301 gives " ": the combining mark is lost);
//   * otherwise each code point is replaced on its own when a rule covers it.
// libsentencepiece instead takes the longest rule at every position, which keeps those marks.
struct SentencePieceTokenizer::PrecompiledNormalizer {
  std::vector<uint32_t> units;
  std::string replacements;
  std::string source;

  static PrecompiledNormalizer parse(std::string_view blob, const std::string& source) {
    PrecompiledNormalizer normalizer;
    normalizer.source = source;
    if (blob.empty()) return normalizer;  // no charsmap: identity, as HF then sets no normalizer
    if (blob.size() < 4)
      fail(ErrorKind::kFormat, source, ": normalizer_spec.precompiled_charsmap has ", blob.size(),
           " bytes, expected at least 4");
    uint32_t trie_bytes = 0;
    for (int i = 3; i >= 0; --i)
      trie_bytes = (trie_bytes << 8) | static_cast<unsigned char>(blob[i]);
    if (trie_bytes % 4 != 0 || trie_bytes > blob.size() - 4 || trie_bytes == 0)
      fail(ErrorKind::kFormat, source, ": normalizer_spec.precompiled_charsmap declares a ",
           trie_bytes, "-byte trie in a ", blob.size(), "-byte blob");
    normalizer.units.resize(trie_bytes / 4);
    for (size_t unit = 0; unit < normalizer.units.size(); ++unit) {
      uint32_t value = 0;
      for (int i = 3; i >= 0; --i)
        value =
            (value << 8) | static_cast<unsigned char>(blob[4 + unit * 4 + static_cast<size_t>(i)]);
      normalizer.units[unit] = value;
    }
    normalizer.replacements = std::string(blob.substr(4 + trie_bytes));
    return normalizer;
  }

  bool empty() const { return units.empty(); }

  // The replacement of the shortest rule that is a prefix of chunk (darts-clone's first
  // commonPrefixSearch result), or nullopt.
  std::optional<std::string_view> transform(std::string_view chunk) const {
    const auto offset = [](uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); };
    const auto label = [](uint32_t unit) { return unit & ((1u << 31) | 0xFFu); };
    const auto has_leaf = [](uint32_t unit) { return ((unit >> 8) & 1u) != 0; };
    size_t node = offset(units[0]);
    for (const char c : chunk) {
      const auto byte = static_cast<unsigned char>(c);
      node ^= byte;
      if (node >= units.size()) return std::nullopt;
      const uint32_t unit = units[node];
      if (label(unit) != byte) return std::nullopt;
      node ^= offset(unit);
      if (node >= units.size()) return std::nullopt;
      if (has_leaf(unit)) return replacement_at(units[node] & ((1u << 31) - 1));
    }
    return std::nullopt;
  }

  std::string_view replacement_at(size_t start) const {
    if (start >= replacements.size())
      fail(ErrorKind::kFormat, source, ": precompiled_charsmap points at byte ", start, " of a ",
           replacements.size(), "-byte replacement table");
    const size_t end = std::min(replacements.find('\0', start), replacements.size());
    const std::string_view replacement = std::string_view(replacements).substr(start, end - start);
    if (tokenizer_detail::find_invalid_utf8(replacement))
      fail(ErrorKind::kFormat, source, ": precompiled_charsmap replacement at byte ", start,
           " is not valid UTF-8");
    return replacement;
  }

  std::string normalize(std::string_view text) const {
    if (empty()) return std::string(text);
    std::string out;
    out.reserve(text.size());
    size_t pos = 0;
    while (pos < text.size()) {
      const size_t end = grapheme_end(text, pos);
      const std::string_view grapheme = text.substr(pos, end - pos);
      pos = end;
      if (grapheme.size() < 6) {
        if (auto replaced = transform(grapheme)) {
          out.append(*replaced);
          continue;
        }
      }
      size_t char_pos = 0;
      while (char_pos < grapheme.size()) {
        const size_t char_begin = char_pos;
        tokenizer_detail::next_code_point(grapheme, char_pos);
        const std::string_view code_point = grapheme.substr(char_begin, char_pos - char_begin);
        if (auto replaced = transform(code_point)) {
          out.append(*replaced);
        } else {
          out.append(code_point);
        }
      }
    }
    return out;
  }
};

SentencePieceTokenizer::SentencePieceTokenizer() = default;
SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::load(
    const std::string& model_dir, const tokenizer_detail::SpecialTokenSettings& settings) {
  namespace fs = std::filesystem;
  const std::string path = (fs::path(model_dir) / "spiece.model").string();
  const std::string bytes = read_file(path);

  // libsentencepiece validates the file and explains what is wrong; the wire-format parse below
  // only reads the fields its API does not expose.
  auto original = make_processor(bytes, path);
  if (original->GetPieceSize() <= 0)
    fail(ErrorKind::kFormat, path, ": not a valid SentencePiece model: it has no pieces");
  const auto model = parse_proto(bytes);
  if (!model) fail(ErrorKind::kFormat, path, ": not a valid SentencePiece model (protobuf)");
  const auto trainer_spec = submessage_fields(*model, 2, path);
  if (const uint64_t type = last_varint(trainer_spec, 3).value_or(1); type != 1)
    fail(ErrorKind::kFormat, path, ": trainer_spec.model_type is ", type, " (",
         type == 2   ? "BPE"
         : type == 3 ? "WORD"
         : type == 4 ? "CHAR"
                     : "unknown",
         "); only Unigram (1) SentencePiece models, as T5 uses, are supported");
  if (last_varint(trainer_spec, 35).value_or(0) != 0)
    fail(
        ErrorKind::kFormat, path,
        ": trainer_spec.byte_fallback is true; only byte_fallback=false models (T5) are supported");
  std::string_view charsmap;
  for (const ProtoField& field : submessage_fields(*model, 3, path))
    if (field.number == 2 && field.wire_type == 2) charsmap = field.payload;

  std::unique_ptr<SentencePieceTokenizer> tokenizer(new SentencePieceTokenizer());
  tokenizer->normalizer_ =
      std::make_unique<PrecompiledNormalizer>(PrecompiledNormalizer::parse(charsmap, path));

  const int64_t pieces = original->GetPieceSize();
  tokenizer->piece_count_ = pieces;
  tokenizer->unk_id_ = original->unk_id();
  std::vector<std::string> piece_text(static_cast<size_t>(pieces));
  std::vector<AddedToken> added;  // control pieces and <unk> are special added tokens in HF
  for (int id = 0; id < pieces; ++id) {
    piece_text[id] = original->IdToPiece(id);
    if (original->IsControl(id) || original->IsUnknown(id)) {
      AddedToken token;
      token.id = id;
      token.content = piece_text[id];
      token.special = true;
      added.push_back(token);
    }
  }

  const std::string tokenizer_json_path = (fs::path(model_dir) / "tokenizer.json").string();
  const bool has_tokenizer_json = path_exists(tokenizer_json_path);
  if (has_tokenizer_json) {
    // Its added_tokens carry the sentinel ids exactly as the fast tokenizer assigns them.
    const json doc = read_json_file(tokenizer_json_path);
    if (!doc.is_object())
      fail(ErrorKind::kFormat, tokenizer_json_path, ": expected a JSON object, found ",
           doc.type_name());
    if (auto list = doc.find("added_tokens"); list != doc.end() && !list->is_null()) {
      added.clear();
      for (AddedToken& token : tokenizer_detail::parse_added_tokens(*list, tokenizer_json_path)) {
        if (token.id < pieces && token.content != piece_text[token.id])
          fail(ErrorKind::kFormat, tokenizer_json_path, ": added token '", token.content,
               "' has id ", token.id, ", but piece ", token.id, " of spiece.model is '",
               piece_text[token.id], "'");
        added.push_back(std::move(token));
      }
    }
  } else {
    // As T5Tokenizer: sentinels listed among the additional special tokens, else `extra_ids`
    // sentinels (100 when unset), numbered downwards from the end of the vocabulary.
    std::vector<int64_t> listed;
    for (const auto& [content, where] : settings.additional_special)
      if (auto number = extra_id_number(content)) listed.push_back(*number);
    int64_t count = settings.extra_ids.value_or(kDefaultExtraIds);
    if (!listed.empty()) {
      std::sort(listed.begin(), listed.end());
      listed.erase(std::unique(listed.begin(), listed.end()), listed.end());
      const auto listed_count = static_cast<int64_t>(listed.size());
      if (settings.extra_ids && *settings.extra_ids > 0 && *settings.extra_ids != listed_count)
        fail(ErrorKind::kFormat, model_dir, "/tokenizer_config.json: extra_ids is ",
             *settings.extra_ids, " but the special token lists name ", listed_count,
             " <extra_id_N> tokens");
      if (listed.back() != listed_count - 1)
        fail(ErrorKind::kFormat, model_dir,
             "/tokenizer_config.json: the listed <extra_id_N> tokens must be numbered 0..",
             listed_count - 1, ", found <extra_id_", listed.back(), ">");
      count = listed_count;
    }
    if (count > 1'000'000)
      fail(ErrorKind::kFormat, model_dir, "/tokenizer_config.json: extra_ids = ", count,
           " is implausibly large");
    for (int64_t n = 0; n < count; ++n) {
      AddedToken token;
      token.id = pieces + count - 1 - n;
      token.content = "<extra_id_" + std::to_string(n) + ">";
      token.special = true;
      added.push_back(std::move(token));
    }
  }
  for (const auto* extra : {&settings.added_tokens_decoder, &settings.legacy_added_tokens}) {
    for (const AddedToken& token : *extra) {
      const bool known = std::any_of(added.begin(), added.end(),
                                     [&](const AddedToken& a) { return a.id == token.id; });
      if (!known) added.push_back(token);
    }
  }

  // Ids past the pieces must be dense: the embedding matrix has exactly vocab_size rows.
  std::vector<const AddedToken*> beyond;
  for (const AddedToken& token : added)
    if (token.id >= pieces) beyond.push_back(&token);
  std::sort(beyond.begin(), beyond.end(),
            [](const AddedToken* a, const AddedToken* b) { return a->id < b->id; });
  for (size_t i = 0; i < beyond.size(); ++i) {
    if (beyond[i]->id != pieces + static_cast<int64_t>(i))
      fail(ErrorKind::kFormat, model_dir, ": added token '", beyond[i]->content, "' has id ",
           beyond[i]->id, ", expected ", pieces + static_cast<int64_t>(i),
           " (added ids must follow the ", pieces, " pieces of spiece.model without gaps)");
  }
  const int64_t size = pieces + static_cast<int64_t>(beyond.size());

  tokenizer->id_to_token_ = piece_text;
  tokenizer->id_to_token_.resize(static_cast<size_t>(size));
  for (const AddedToken* token : beyond) tokenizer->id_to_token_[token->id] = token->content;
  for (int64_t id = 0; id < size; ++id)
    tokenizer->token_to_id_.emplace(tokenizer->id_to_token_[id], id);
  for (const AddedToken& token : added) tokenizer->token_to_id_[token.content] = token.id;

  const auto lookup = [&](std::string_view token) -> std::optional<int64_t> {
    auto found = tokenizer->token_to_id_.find(std::string(token));
    if (found == tokenizer->token_to_id_.end()) return std::nullopt;
    return found->second;
  };
  tokenizer_detail::NamedDefaults defaults;  // T5Tokenizer: pad, eos, unk; never a bos
  if (original->pad_id() >= 0) defaults.pad = original->pad_id();
  if (original->eos_id() >= 0) defaults.eos = original->eos_id();
  if (original->unk_id() >= 0) defaults.unk = original->unk_id();
  tokenizer->specials_ = tokenizer_detail::resolve_named_tokens(settings, defaults, size, lookup);

  const auto mark_special = [&](int64_t id) {
    for (AddedToken& token : added) {
      if (token.id == id) {
        token.special = true;
        return;
      }
    }
    AddedToken token;
    token.id = id;
    token.content = tokenizer->id_to_token_[id];
    token.special = true;
    added.push_back(std::move(token));
  };
  const auto& s = tokenizer->specials_;
  for (const auto& id : {s.bos, s.eos, s.unk, s.pad})
    if (id) mark_special(*id);
  for (const auto& [content, where] : settings.additional_special) {
    auto id = lookup(content);
    if (!id)
      fail(ErrorKind::kFormat, where, ": token '", content,
           "' is neither a piece of spiece.model nor an added token");
    // tokenizer.json's or added_tokens_decoder's "special": false survives (decode keeps it).
    if (!tokenizer_detail::special_flag_from_file(added, *id)) mark_special(*id);
  }

  tokenizer->id_special_.assign(static_cast<size_t>(size), false);
  std::vector<AddedToken> raw, normalized;
  // The Unigram vocabulary of HF's T5 tokenizer: every piece with its score (control pieces and
  // <unk> included: they can be matched inside normalized text), then the sentinels at 0.0.
  std::vector<std::pair<std::string, int64_t>> unigram_vocab;
  tokenizer->scores_.assign(static_cast<size_t>(size), 0.0);
  for (int64_t id = 0; id < pieces; ++id) {
    unigram_vocab.emplace_back(piece_text[id], id);
    tokenizer->scores_[id] = original->GetScore(static_cast<int>(id));
  }
  for (const AddedToken& token : added) {
    if (token.special) tokenizer->id_special_[token.id] = true;
    if (token.normalized) {
      // tokenizers normalizes such a token's content too, so that it meets normalized text.
      AddedToken as_normalized = token;
      as_normalized.content = tokenizer->normalize(token.content);
      normalized.push_back(std::move(as_normalized));
    } else {
      raw.push_back(token);
    }
    if (token.id >= pieces && extra_id_number(token.content)) {
      unigram_vocab.emplace_back(token.content, token.id);
      ++tokenizer->extra_id_count_;
    }
  }
  tokenizer->raw_matcher_ = tokenizer_detail::AddedTokenMatcher(raw);
  tokenizer->normalized_matcher_ = tokenizer_detail::AddedTokenMatcher(normalized);
  tokenizer->build_unigram(unigram_vocab);
  tokenizer->clean_up_tokenization_spaces_ = settings.clean_up_tokenization_spaces;
  return tokenizer;
}

// ---------------------------------------------------------------------------------------------
// Encoding

std::vector<int64_t> SentencePieceTokenizer::encode(std::string_view text,
                                                    bool add_special_tokens) const {
  tokenizer_detail::require_valid_utf8(text, "SentencePieceTokenizer::encode");
  std::vector<int64_t> ids;
  for (const auto& piece : raw_matcher_.split(text)) {
    if (piece.token_id) {
      ids.push_back(*piece.token_id);
    } else {
      encode_segment(piece.text, ids);
    }
  }
  // transformers 5's T5Tokenizer always installs the template "$A </s>".
  if (add_special_tokens && specials_.eos) ids.push_back(*specials_.eos);
  return ids;
}

std::string SentencePieceTokenizer::normalize(std::string_view text) const {
  return normalizer_->normalize(text);
}

void SentencePieceTokenizer::encode_segment(std::string_view text,
                                            std::vector<int64_t>& out) const {
  const std::string normalized = normalize(text);
  for (const auto& piece : normalized_matcher_.split(normalized)) {
    if (piece.token_id) {
      out.push_back(*piece.token_id);
      continue;
    }
    // WhitespaceSplit: words are the maximal runs without Unicode White_Space. This is where
    // U+0085 separates words: the charsmap leaves it alone, unlike the other spaces.
    const std::string_view segment = piece.text;
    size_t pos = 0;
    size_t word_begin = 0;
    while (pos < segment.size()) {
      const size_t char_begin = pos;
      if (tokenizer_detail::is_unicode_whitespace(
              tokenizer_detail::next_code_point(segment, pos))) {
        if (char_begin > word_begin)
          encode_word(segment.substr(word_begin, char_begin - word_begin), out);
        word_begin = pos;
      }
    }
    if (word_begin < segment.size()) encode_word(segment.substr(word_begin), out);
  }
}

void SentencePieceTokenizer::encode_word(std::string_view word, std::vector<int64_t>& out) const {
  // Metaspace(prepend_scheme="always", split=true): "▁" in front unless already there, then a new
  // piece at every "▁" (a literal "▁" in the text therefore acts like a space).
  std::string marked;
  if (!word.starts_with(kMetaSpace)) {
    marked.reserve(word.size() + kMetaSpace.size());
    marked.append(kMetaSpace);
  }
  marked.append(word);
  const std::string_view text = marked;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find(kMetaSpace, begin + kMetaSpace.size());
    if (end == std::string_view::npos) end = text.size();
    encode_unigram(text.substr(begin, end - begin), out);
    begin = end;
  }
}

void SentencePieceTokenizer::build_unigram(
    const std::vector<std::pair<std::string, int64_t>>& vocab) {
  trie_token_.assign(1, -1);
  double min_score = std::numeric_limits<double>::infinity();
  for (const auto& [piece, id] : vocab) {
    min_score = std::min(min_score, scores_[static_cast<size_t>(id)]);
    if (piece.empty()) continue;
    int32_t node = 0;
    for (const char c : piece) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(c);
      auto [edge, inserted] = trie_edges_.emplace(key, static_cast<int32_t>(trie_token_.size()));
      if (inserted) trie_token_.push_back(-1);
      node = edge->second;
    }
    if (trie_token_[node] < 0) trie_token_[node] = id;
  }
  // tokenizers' Unigram: an uncovered character costs 10 less than the worst piece.
  unk_score_ = min_score - 10.0;
}

// The tokenizers library's Unigram::encode_optimized: one forward pass keeping, for every end
// position, the best path ending there (scores summed in double; on a tie the path found first,
// i.e. the one whose last piece starts earliest, stays), then a backward walk that fuses runs of
// unknown characters into one <unk>. libsentencepiece sums in float and breaks ties the other
// way, which changes e.g. ".…" (→ "....") from [".", "..."] to ["...", "."].
void SentencePieceTokenizer::encode_unigram(std::string_view text,
                                            std::vector<int64_t>& out) const {
  struct Best {
    int64_t id = -1;
    double score = 0.0;
    int64_t starts_at = -1;
  };
  std::vector<Best> best(text.size() + 1);
  const auto offer = [&](size_t end, int64_t id, double score, size_t start) {
    Best& target = best[end];
    if (target.starts_at < 0 || score > target.score)
      target = Best{id, score, static_cast<int64_t>(start)};
  };
  size_t start = 0;
  while (start < text.size()) {
    const double score_so_far = best[start].score;
    size_t next = start;
    tokenizer_detail::next_code_point(text, next);
    bool covers_one_char = false;
    int32_t node = 0;
    for (size_t i = start; i < text.size(); ++i) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[i]);
      auto edge = trie_edges_.find(key);
      if (edge == trie_edges_.end()) break;
      node = edge->second;
      const int64_t id = trie_token_[node];
      if (id < 0) continue;
      offer(i + 1, id, score_so_far + scores_[static_cast<size_t>(id)], start);
      if (i + 1 == next) covers_one_char = true;
    }
    if (!covers_one_char) offer(next, unk_id_, score_so_far + unk_score_, start);
    start = next;
  }
  std::vector<int64_t> reversed;
  bool after_unknown = false;
  for (int64_t end = static_cast<int64_t>(text.size()); end > 0; end = best[end].starts_at) {
    const int64_t id = best[end].id;
    const bool unknown = id == unk_id_;
    if (!(unknown && after_unknown)) reversed.push_back(id);
    after_unknown = unknown;
  }
  out.insert(out.end(), reversed.rbegin(), reversed.rend());
}

// ---------------------------------------------------------------------------------------------
// Decoding and vocabulary access

std::string SentencePieceTokenizer::decode(std::span<const int64_t> ids,
                                           bool skip_special_tokens) const {
  std::string text;
  bool first = true;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    if (id < 0)
      fail(ErrorKind::kInvalidArgument, "SentencePieceTokenizer::decode: ids[", i, "] = ", id,
           " is negative; expected a token id in [0, ", vocab_size(), ")");
    // t5-base's embedding has 32128 rows for 32100 tokens; ids past the tokenizer decode to
    // nothing, as in transformers (and do not count as the first token for the "▁" rule).
    if (id >= vocab_size()) continue;
    if (skip_special_tokens && id_special_[static_cast<size_t>(id)]) continue;
    // Metaspace decoder: "▁" becomes a space, except in the first token, where it disappears.
    const std::string_view token = id_to_token_[static_cast<size_t>(id)];
    size_t pos = 0;
    while (pos < token.size()) {
      if (token.substr(pos).starts_with(kMetaSpace)) {
        if (!first) text += ' ';
        pos += kMetaSpace.size();
      } else {
        text += token[pos++];
      }
    }
    first = false;
  }
  if (clean_up_tokenization_spaces_)
    text = tokenizer_detail::clean_up_tokenization(std::move(text));
  return text;
}

std::optional<int64_t> SentencePieceTokenizer::token_to_id(std::string_view token) const {
  auto found = token_to_id_.find(std::string(token));
  if (found == token_to_id_.end()) return std::nullopt;
  return found->second;
}

std::string SentencePieceTokenizer::id_to_token(int64_t id) const {
  if (id < 0 || id >= vocab_size())
    fail(ErrorKind::kInvalidArgument, "SentencePieceTokenizer::id_to_token: id ", id,
         " is out of range [0, ", vocab_size(), ")");
  return id_to_token_[static_cast<size_t>(id)];
}

}  // namespace sp
