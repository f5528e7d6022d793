// BpeByteFallbackTokenizer: loading from tokenizer.json, encoding and decoding.
#include "models/bpe_byte_fallback_tokenizer.h"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <queue>
#include <tuple>
#include <utility>

#include "engine/error.h"

namespace sp {

using nlohmann::json;
using tokenizer_detail::AddedToken;
using Step = BpeByteFallbackTokenizer::Step;

namespace {

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(text);
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text.substr(pos));
  return out;
}

std::string type_of(const json& object) {
  if (!object.is_object()) return "(not an object)";
  auto type = object.find("type");
  if (type == object.end() || !type->is_string()) return "(no type)";
  return type->get<std::string>();
}

std::string string_field(const json& object, const char* key, const std::string& where) {
  auto found = object.find(key);
  if (found == object.end() || !found->is_string())
    fail(ErrorKind::kFormat, where, ": field '", key, "' must be a string, found ",
         found == object.end() ? std::string("nothing") : found->dump());
  return found->get<std::string>();
}

const std::string* optional_string(const json& object, const char* key, const std::string& where) {
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return nullptr;
  if (!found->is_string())
    fail(ErrorKind::kFormat, where, ": field '", key, "' must be a string or null, found ",
         found->dump());
  return &found->get_ref<const std::string&>();
}

bool optional_bool(const json& object, const char* key, bool fallback, const std::string& where) {
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return fallback;
  if (!found->is_boolean())
    fail(ErrorKind::kFormat, where, ": field '", key, "' must be true or false, found ",
         found->dump());
  return found->get<bool>();
}

// Replace's pattern is {"String": "..."}; regex patterns are not implemented.
std::string replace_pattern(const json& step, const std::string& where) {
  auto pattern = step.find("pattern");
  if (pattern == step.end() || !pattern->is_object() || !pattern->contains("String") ||
      !(*pattern)["String"].is_string())
    fail(ErrorKind::kFormat, where, ": field 'pattern' must be {\"String\": \"...\"}, found ",
         pattern == step.end() ? std::string("nothing") : pattern->dump());
  return (*pattern)["String"].get<std::string>();
}

// The steps of a component that is one step or a Sequence of them ("normalizers" / "decoders").
std::vector<std::pair<const json*, std::string>> flatten(const json& component,
                                                         const char* list_key,
                                                         const std::string& where) {
  std::vector<std::pair<const json*, std::string>> steps;
  if (type_of(component) != "Sequence") {
    steps.emplace_back(&component, where);
    return steps;
  }
  auto list = component.find(list_key);
  if (list == component.end() || !list->is_array())
    fail(ErrorKind::kFormat, where, ": field '", list_key, "' must be a list, found ",
         list == component.end() ? std::string("nothing") : list->dump());
  for (size_t i = 0; i < list->size(); ++i)
    steps.emplace_back(&(*list)[i], str_cat(where, ".", list_key, "[", i, "]"));
  return steps;
}

BpeByteFallbackTokenizer::Prepend parse_prepend_scheme(const json& object,
                                                       const std::string& where) {
  if (const std::string* scheme = optional_string(object, "prepend_scheme", where)) {
    if (*scheme == "always") return BpeByteFallbackTokenizer::Prepend::kAlways;
    if (*scheme == "first") return BpeByteFallbackTokenizer::Prepend::kFirst;
    if (*scheme == "never") return BpeByteFallbackTokenizer::Prepend::kNever;
    fail(ErrorKind::kFormat, where, ": field 'prepend_scheme' is '", *scheme,
         "', expected 'always', 'first' or 'never'");
  }
  // Files older than prepend_scheme say add_prefix_space instead.
  return optional_bool(object, "add_prefix_space", true, where)
             ? BpeByteFallbackTokenizer::Prepend::kAlways
             : BpeByteFallbackTokenizer::Prepend::kNever;
}

// tokenizers' ByteFallback decoder recognises "<0xNN>" by length and u8::from_str_radix, which
// also takes a leading '+'.
std::optional<unsigned char> byte_token_value(std::string_view token) {
  if (token.size() != 6 || !token.starts_with("<0x") || token.back() != '>') return std::nullopt;
  const auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  const int high = token[3] == '+' ? 0 : digit(token[3]);
  const int low = digit(token[4]);
  if (high < 0 || low < 0) return std::nullopt;
  return static_cast<unsigned char>(high * 16 + low);
}

std::vector<char32_t> code_points(std::string_view text) {
  std::vector<char32_t> out;
  size_t pos = 0;
  while (pos < text.size()) out.push_back(tokenizer_detail::next_code_point(text, pos));
  return out;
}

}  // namespace

std::unique_ptr<BpeByteFallbackTokenizer> BpeByteFallbackTokenizer::from_tokenizer_json(
    const json& doc, const std::string& source,
    const tokenizer_detail::SpecialTokenSettings& settings) {
  std::unique_ptr<BpeByteFallbackTokenizer> tok(new BpeByteFallbackTokenizer());
  if (!doc.is_object()) fail(ErrorKind::kFormat, source, ": expected a JSON object");
  auto model = doc.find("model");
  if (model == doc.end() || !model->is_object())
    fail(ErrorKind::kFormat, source, ": missing the 'model' object");
  const std::string model_source = source + ": model";
  if (const std::string* type = optional_string(*model, "type", model_source);
      type && *type != "BPE")
    fail(ErrorKind::kFormat, model_source, ".type is '", *type, "', expected 'BPE'");

  // Vocabulary.
  auto vocab = model->find("vocab");
  if (vocab == model->end() || !vocab->is_object())
    fail(ErrorKind::kFormat, model_source, ".vocab must be an object {token: id}, found ",
         vocab == model->end() ? std::string("nothing") : std::string(vocab->type_name()));
  std::unordered_map<int64_t, std::string> owner_of_id;
  for (const auto& [token, value] : vocab->items()) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() > std::numeric_limits<int32_t>::max())
      fail(ErrorKind::kFormat, model_source, ".vocab: token '", token,
           "' must map to an id in [0, 2^31), found ", value.dump());
    const int64_t id = value.get<int64_t>();
    auto [previous, inserted] = owner_of_id.emplace(id, token);
    if (!inserted)
      fail(ErrorKind::kFormat, model_source, ".vocab: id ", id, " is used twice, by '",
           previous->second, "' and by '", token, "'");
    tok->vocab_.emplace(token, static_cast<int32_t>(id));
  }

  // Model options.
  if (auto dropout = model->find("dropout");
      dropout != model->end() && !dropout->is_null() &&
      !(dropout->is_number() && dropout->get<double>() == 0.0))
    fail(ErrorKind::kFormat, model_source, ".dropout is ", dropout->dump(),
         "; BPE dropout is not supported (expected null)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const std::string* value = optional_string(*model, key, model_source);
    if (value && !value->empty())
      fail(ErrorKind::kFormat, model_source, ".", key, " is '", *value,
           "'; only BPE without it is supported");
  }
  const bool byte_fallback = optional_bool(*model, "byte_fallback", false, model_source);
  tok->fuse_unk_ = optional_bool(*model, "fuse_unk", false, model_source);
  tok->ignore_merges_ = optional_bool(*model, "ignore_merges", false, model_source);
  if (const std::string* unk = optional_string(*model, "unk_token", model_source)) {
    auto found = tok->vocab_.find(*unk);
    if (found == tok->vocab_.end())
      fail(ErrorKind::kFormat, model_source, ".unk_token '", *unk, "' is not in the vocabulary");
    tok->unk_id_ = found->second;
  }
  for (int byte = 0; byte < 256; ++byte) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    const std::string name = {'<', '0', 'x', kHex[byte >> 4], kHex[byte & 15], '>'};
    auto found = tok->vocab_.find(name);
    tok->byte_ids_[byte] = byte_fallback && found != tok->vocab_.end() ? found->second : -1;
  }

  // Merges: "a b" or ["a", "b"], by rank over characters.
  auto merges = model->find("merges");
  if (merges == model->end() || !merges->is_array())
    fail(ErrorKind::kFormat, model_source, ".merges must be a list, found ",
         merges == model->end() ? std::string("nothing") : std::string(merges->type_name()));
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& entry = (*merges)[i];
    const std::string where = str_cat(model_source, ".merges[", i, "]");
    std::string left, right;
    if (entry.is_string()) {
      const std::string& text = entry.get_ref<const std::string&>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == text.size() ||
          text.find(' ', space + 1) != std::string::npos)
        fail(ErrorKind::kFormat, where, ": expected two symbols separated by one space, found '",
             text, "'");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      fail(ErrorKind::kFormat, where, ": expected \"a b\" or [\"a\", \"b\"], found ", entry.dump());
    }
    const auto id_of = [&](const std::string& symbol) {
      auto found = tok->vocab_.find(symbol);
      if (found == tok->vocab_.end())
        fail(ErrorKind::kFormat, where, ": symbol '", symbol, "' is not in the vocabulary");
      return found->second;
    };
    const int32_t left_id = id_of(left), right_id = id_of(right);
    tok->merges_.add(left_id, right_id, static_cast<int32_t>(i), id_of(left + right));
  }

  // Normalizer: Prepend / Replace (Llama 2), alone or in a Sequence.
  if (auto normalizer = doc.find("normalizer"); normalizer != doc.end() && !normalizer->is_null()) {
    for (const auto& [step, where] : flatten(*normalizer, "normalizers", source + ": normalizer")) {
      const std::string type = type_of(*step);
      if (type == "Prepend") {
        tok->normalizer_.push_back(
            {Step::Kind::kPrepend, "", string_field(*step, "prepend", where)});
      } else if (type == "Replace") {
        tok->normalizer_.push_back({Step::Kind::kReplace, replace_pattern(*step, where),
                                    string_field(*step, "content", where)});
      } else {
        fail(ErrorKind::kFormat, where, ": unsupported normalizer type '", type,
             "' (supported for BPE with byte fallback: Prepend, Replace, Sequence of them, null)");
      }
    }
  }

  // Pre-tokenizer: none (Llama 2) or Metaspace (Mistral, newer Llama 2 files).
  if (auto pre = doc.find("pre_tokenizer"); pre != doc.end() && !pre->is_null()) {
    const std::string where = source + ": pre_tokenizer";
    const std::string type = type_of(*pre);
    if (type != "Metaspace")
      fail(ErrorKind::kFormat, where, ": unsupported pre_tokenizer type '", type,
           "' (supported for BPE with byte fallback: Metaspace, null)");
    tok->metaspace_ = true;
    tok->metaspace_mark_ = string_field(*pre, "replacement", where);
    if (code_points(tok->metaspace_mark_).size() != 1)
      fail(ErrorKind::kFormat, where, ": field 'replacement' must be one character, found '",
           tok->metaspace_mark_, "'");
    tok->metaspace_prepend_ = parse_prepend_scheme(*pre, where);
    tok->metaspace_split_ = optional_bool(*pre, "split", true, where);
  }

  // Decoder: Replace / ByteFallback / Fuse / Strip (Llama 2) or Metaspace.
  if (auto decoder = doc.find("decoder"); decoder != doc.end() && !decoder->is_null()) {
    for (const auto& [step, where] : flatten(*decoder, "decoders", source + ": decoder")) {
      const std::string type = type_of(*step);
      Step parsed{};
      if (type == "Replace") {
        parsed = {Step::Kind::kReplace, replace_pattern(*step, where),
                  string_field(*step, "content", where)};
      } else if (type == "ByteFallback") {
        parsed.kind = Step::Kind::kByteFallback;
      } else if (type == "Fuse") {
        parsed.kind = Step::Kind::kFuse;
      } else if (type == "Strip") {
        parsed.kind = Step::Kind::kStrip;
        parsed.content = string_field(*step, "content", where);
        if (code_points(parsed.content).size() != 1)
          fail(ErrorKind::kFormat, where, ": field 'content' must be one character, found '",
               parsed.content, "'");
        for (const auto& [key, value] :
             {std::pair{"start", &parsed.start}, {"stop", &parsed.stop}}) {
          auto found = step->find(key);
          if (found == step->end() || !found->is_number_integer() || found->get<int64_t>() < 0)
            fail(ErrorKind::kFormat, where, ": field '", key,
                 "' must be a non-negative integer, found ",
                 found == step->end() ? std::string("nothing") : found->dump());
          *value = found->get<int64_t>();
        }
      } else if (type == "Metaspace") {
        parsed.kind = Step::Kind::kMetaspace;
        parsed.pattern = string_field(*step, "replacement", where);
        parsed.drop_first_marks = parse_prepend_scheme(*step, where) != Prepend::kNever;
      } else {
        fail(ErrorKind::kFormat, where, ": unsupported decoder type '", type,
             "' (supported for BPE with byte fallback: Replace, ByteFallback, Fuse, Strip, "
             "Metaspace, Sequence of them, null)");
      }
      tok->decoder_.push_back(std::move(parsed));
    }
  }
  if (auto post = doc.find("post_processor"); post != doc.end())
    tok->template_ = tokenizer_detail::parse_template_processing(*post, source);

  // Added tokens: the file's, then those only tokenizer_config.json / added_tokens.json name.
  std::vector<AddedToken> added = tokenizer_detail::collect_added_tokens(doc, source, settings);

  // Ids may leave gaps, but not more than there are tokens (a stray huge id must not allocate).
  const auto id_limit = static_cast<int64_t>(tok->vocab_.size() + added.size());
  int64_t size = 0;
  for (const auto& [token, id] : tok->vocab_) size = std::max<int64_t>(size, int64_t{id} + 1);
  for (const AddedToken& token : added) size = std::max(size, token.id + 1);
  if (size > id_limit)
    fail(ErrorKind::kFormat, model_source, ": the largest id is ", size - 1, ", expected < ",
         id_limit, " (the number of tokens)");
  tok->id_to_token_.assign(static_cast<size_t>(size), std::string());
  tok->id_used_.assign(static_cast<size_t>(size), false);
  tok->id_special_.assign(static_cast<size_t>(size), false);
  for (const auto& [token, id] : tok->vocab_) {
    tok->id_to_token_[id] = token;
    tok->id_used_[id] = true;
  }
  tok->token_to_id_ = tok->vocab_;

  const auto lookup = [&](std::string_view token) -> std::optional<int64_t> {
    for (const AddedToken& a : added)
      if (a.content == token) return a.id;
    auto found = tok->vocab_.find(token);
    if (found == tok->vocab_.end()) return std::nullopt;
    return found->second;
  };
  // No family defaults: with tokenizer.json, transformers takes the names from the config files.
  tok->specials_ = tokenizer_detail::resolve_named_tokens(settings, {}, size, lookup);
  tokenizer_detail::mark_special_tokens(
      added, tok->specials_, settings, lookup,
      [&](int64_t id) -> std::optional<std::string> {
        if (!tok->id_used_[size_t(id)]) return std::nullopt;
        return tok->id_to_token_[size_t(id)];
      },
      model_source);
  std::vector<AddedToken> raw, normalized;
  for (const AddedToken& token : added) {
    const auto id = static_cast<size_t>(token.id);
    tok->id_to_token_[id] = token.content;  // the added vocabulary wins, as in HF
    tok->id_used_[id] = true;
    tok->id_special_[id] = tok->id_special_[id] || token.special;
    tok->token_to_id_.emplace(token.content, static_cast<int32_t>(token.id));
    (token.normalized ? normalized : raw).push_back(token);
  }
  tok->raw_matcher_ = tokenizer_detail::AddedTokenMatcher(raw);
  tok->normalized_matcher_ = tokenizer_detail::AddedTokenMatcher(normalized);
  for (const auto* ids : {&tok->template_.prefix, &tok->template_.suffix}) {
    for (int64_t id : *ids)
      if (id >= size || !tok->id_used_[static_cast<size_t>(id)])
        fail(ErrorKind::kFormat, source, ": post_processor id ", id,
             " is not a token of the vocabulary");
  }
  return tok;
}

// ---------------------------------------------------------------------------------------------
// Encoding

std::string BpeByteFallbackTokenizer::normalize(std::string_view text) const {
  std::string out(text);
  for (const Step& step : normalizer_) {
    if (step.kind == Step::Kind::kPrepend) {
      if (!out.empty()) out.insert(0, step.content);  // tokenizers leaves empty text alone
    } else {
      out = replace_all(out, step.pattern, step.content);
    }
  }
  return out;
}

std::vector<int64_t> BpeByteFallbackTokenizer::encode(std::string_view text,
                                                      bool add_special_tokens) const {
  tokenizer_detail::require_valid_utf8(text, "BpeByteFallbackTokenizer::encode");
  std::vector<int64_t> ids;
  if (add_special_tokens) ids.insert(ids.end(), template_.prefix.begin(), template_.prefix.end());
  for (const auto& piece : raw_matcher_.split(text)) {
    if (piece.token_id) {
      ids.push_back(*piece.token_id);
      continue;
    }
    // The normalizer runs on each stretch between added tokens (so Llama 2's Prepend("▁") marks
    // the text after every special token); normalized added tokens are matched afterwards.
    const bool piece_at_start = piece.text.data() == text.data();
    const std::string normalized = normalize(piece.text);
    for (const auto& inner : normalized_matcher_.split(normalized)) {
      if (inner.token_id) {
        ids.push_back(*inner.token_id);
      } else {
        encode_piece(inner.text, piece_at_start && inner.text.data() == normalized.data(), ids);
      }
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), template_.suffix.begin(), template_.suffix.end());
  return ids;
}

void BpeByteFallbackTokenizer::encode_piece(std::string_view piece, bool at_start,
                                            std::vector<int64_t>& out) const {
  if (!metaspace_) {
    encode_word(piece, out);
    return;
  }
  std::string text = replace_all(piece, " ", metaspace_mark_);
  // "first" prepends only where the piece begins the original text (not after an added token).
  const bool prepend =
      metaspace_prepend_ == Prepend::kAlways || (metaspace_prepend_ == Prepend::kFirst && at_start);
  if (prepend && !text.starts_with(metaspace_mark_)) text.insert(0, metaspace_mark_);
  if (!metaspace_split_) {
    encode_word(text, out);
    return;
  }
  // split: every mark starts a new word (tokenizers' MergedWithNext).
  size_t begin = 0;
  while (begin < text.size()) {
    size_t next = text.find(
        metaspace_mark_, begin + (text.compare(begin, metaspace_mark_.size(), metaspace_mark_) == 0
                                      ? metaspace_mark_.size()
                                      : 0));
    if (next == std::string::npos) next = text.size();
    encode_word(std::string_view(text).substr(begin, next - begin), out);
    begin = next;
  }
}

void BpeByteFallbackTokenizer::encode_word(std::string_view word, std::vector<int64_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto whole = vocab_.find(word); whole != vocab_.end()) {
      out.push_back(whole->second);
      return;
    }
  }
  std::vector<int32_t> symbols;
  const auto push = [&](int32_t id) { symbols.push_back(id); };
  // Mirrors tokenizers' merge_word: a pending (fused) unknown is written when the next known
  // character arrives or at the end, not before byte-fallback tokens.
  bool unk_pending = false;
  size_t pos = 0;
  while (pos < word.size()) {
    const size_t begin = pos;
    tokenizer_detail::next_code_point(word, pos);
    const std::string_view character = word.substr(begin, pos - begin);
    if (auto found = vocab_.find(character); found != vocab_.end()) {
      if (unk_pending) push(*unk_id_);
      unk_pending = false;
      push(found->second);
      continue;
    }
    const bool all_bytes = std::all_of(character.begin(), character.end(), [&](char c) {
      return byte_ids_[static_cast<unsigned char>(c)] >= 0;
    });
    if (all_bytes) {
      for (const char c : character) push(byte_ids_[static_cast<unsigned char>(c)]);
      continue;
    }
    if (!unk_id_) continue;  // without an unk token, tokenizers drops the character
    if (unk_pending && !fuse_unk_) push(*unk_id_);
    unk_pending = true;
  }
  if (unk_pending) push(*unk_id_);
  for (int32_t id : merges_.apply(symbols)) out.push_back(id);
}

// ---------------------------------------------------------------------------------------------
// Decoding and vocabulary access

std::string BpeByteFallbackTokenizer::decode(std::span<const int64_t> ids,
                                             bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    if (id < 0)
      fail(ErrorKind::kInvalidArgument, "BpeByteFallbackTokenizer::decode: ids[", i, "] = ", id,
           " is negative; expected a token id in [0, ", vocab_size(), ")");
    // Ids past the tokenizer (a model's embedding padded further) decode to nothing, as in HF.
    if (id >= vocab_size() || !id_used_[static_cast<size_t>(id)]) continue;
    if (skip_special_tokens && id_special_[static_cast<size_t>(id)]) continue;
    tokens.push_back(id_to_token_[static_cast<size_t>(id)]);
  }
  if (decoder_.empty()) {
    // tokenizers joins with spaces when there is no decoder.
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const Step& step : decoder_) {
    switch (step.kind) {
      case Step::Kind::kReplace:
        for (std::string& token : tokens) token = replace_all(token, step.pattern, step.content);
        break;
      case Step::Kind::kByteFallback: {
        // Runs of <0xNN> become their bytes when those are UTF-8, else one U+FFFD per byte.
        std::vector<std::string> merged;
        std::string bytes;
        size_t run = 0;
        const auto flush = [&] {
          if (run == 0) return;
          if (tokenizer_detail::find_invalid_utf8(bytes)) {
            for (size_t i = 0; i < run; ++i) merged.emplace_back("\xEF\xBF\xBD");
          } else {
            merged.push_back(bytes);
          }
          bytes.clear();
          run = 0;
        };
        for (std::string& token : tokens) {
          if (auto byte = byte_token_value(token)) {
            bytes += static_cast<char>(*byte);
            ++run;
          } else {
            flush();
            merged.push_back(std::move(token));
          }
        }
        flush();
        tokens = std::move(merged);
        break;
      }
      case Step::Kind::kFuse: {
        std::string fused;
        for (const std::string& token : tokens) fused += token;
        tokens.assign(1, std::move(fused));
        break;
      }
      case Step::Kind::kStrip: {
        // Per token: at most `start` leading and `stop` trailing copies of the character.
        for (std::string& token : tokens) {
          std::string_view view(token);
          for (int64_t i = 0; i < step.start && view.starts_with(step.content); ++i)
            view.remove_prefix(step.content.size());
          for (int64_t i = 0; i < step.stop && view.ends_with(step.content); ++i)
            view.remove_suffix(step.content.size());
          token = std::string(view);
        }
        break;
      }
      case Step::Kind::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i)
          tokens[i] =
              replace_all(tokens[i], step.pattern, i == 0 && step.drop_first_marks ? "" : " ");
        break;
      case Step::Kind::kPrepend:
        break;  // normalizer-only
    }
  }
  std::string out;
  for (const std::string& token : tokens) out += token;
  // No clean_up_tokenization_spaces: transformers 5 ignores it for every BPE model.
  return out;
}

std::optional<int64_t> BpeByteFallbackTokenizer::token_to_id(std::string_view token) const {
  auto found = token_to_id_.find(token);
  if (found == token_to_id_.end()) return std::nullopt;
  return found->second;
}

std::string BpeByteFallbackTokenizer::id_to_token(int64_t id) const {
  if (id < 0 || id >= vocab_size() || !id_used_[static_cast<size_t>(id)])
    fail(ErrorKind::kInvalidArgument, "BpeByteFallbackTokenizer::id_to_token: id ", id,
         id < 0 || id >= vocab_size() ? " is out of range [0, " : " is not assigned in [0, ",
         vocab_size(), ")");
  return id_to_token_[static_cast<size_t>(id)];
}

}  // namespace sp
