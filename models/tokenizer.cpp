// load_tokenizer() and the special-token / added-token / UTF-8 helpers shared by the tokenizers.
#include "models/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <utility>

#include "engine/error.h"
#include "engine/input_file.h"
#include "models/bpe_byte_fallback_tokenizer.h"
#include "models/bpe_tokenizer.h"
#include "models/sentencepiece_tokenizer.h"

namespace sp {

namespace fs = std::filesystem;
using nlohmann::json;

namespace tokenizer_detail {

// ---------------------------------------------------------------------------------------------
// UTF-8

bool is_unicode_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

namespace {

// Length of the well-formed sequence starting at text[pos] (Unicode Table 3-7), or the length
// of its maximal invalid subpart negated (always >= 1 byte) when it is ill-formed.
int utf8_sequence_length(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(pos);
  if (lead < 0x80) return 1;
  int length = 0;
  unsigned char second_low = 0x80, second_high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) second_low = 0xA0;
    if (lead == 0xED) second_high = 0x9F;  // excludes the UTF-16 surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) second_low = 0x90;
    if (lead == 0xF4) second_high = 0x8F;  // nothing above U+10FFFF
  } else {
    return -1;
  }
  for (int i = 1; i < length; ++i) {
    if (pos + i >= text.size()) return -i;
    const unsigned char low = i == 1 ? second_low : 0x80;
    const unsigned char high = i == 1 ? second_high : 0xBF;
    if (byte(pos + i) < low || byte(pos + i) > high) return -i;
  }
  return length;
}

}  // namespace

char32_t next_code_point(std::string_view text, size_t& pos) {
  const auto byte = [&](size_t i) {
    return static_cast<char32_t>(static_cast<unsigned char>(text[i]));
  };
  const char32_t lead = byte(pos);
  if (lead < 0x80) {
    pos += 1;
    return lead;
  }
  if (lead < 0xE0) {
    const char32_t c = ((lead & 0x1F) << 6) | (byte(pos + 1) & 0x3F);
    pos += 2;
    return c;
  }
  if (lead < 0xF0) {
    const char32_t c =
        ((lead & 0x0F) << 12) | ((byte(pos + 1) & 0x3F) << 6) | (byte(pos + 2) & 0x3F);
    pos += 3;
    return c;
  }
  const char32_t c = ((lead & 0x07) << 18) | ((byte(pos + 1) & 0x3F) << 12) |
                     ((byte(pos + 2) & 0x3F) << 6) | (byte(pos + 3) & 0x3F);
  pos += 4;
  return c;
}

std::optional<size_t> find_invalid_utf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    const int length = utf8_sequence_length(text, pos);
    if (length < 0) return pos;
    pos += static_cast<size_t>(length);
  }
  return std::nullopt;
}

void require_valid_utf8(std::string_view text, std::string_view what) {
  if (auto bad = find_invalid_utf8(text))
    fail(ErrorKind::kInvalidArgument, what, ": text is not valid UTF-8 (byte ", *bad, " of ",
         text.size(), " starts an ill-formed sequence)");
}

std::string replace_invalid_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const int length = utf8_sequence_length(bytes, pos);
    if (length > 0) {
      out.append(bytes.substr(pos, static_cast<size_t>(length)));
      pos += static_cast<size_t>(length);
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD
      pos += static_cast<size_t>(-length);
    }
  }
  return out;
}

std::string encode_utf8(char32_t c) {
  std::string out;
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
  return out;
}

std::string clean_up_tokenization(std::string text) {
  // Same replacements, same order as transformers' PreTrainedTokenizerBase.clean_up_tokenization.
  static const std::pair<std::string_view, std::string_view> kReplacements[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kReplacements) {
    std::string out;
    size_t pos = 0;
    while (true) {
      const size_t hit = text.find(from, pos);
      if (hit == std::string::npos) break;
      out.append(text, pos, hit - pos);
      out.append(to);
      pos = hit + from.size();
    }
    out.append(text, pos, std::string::npos);
    text = std::move(out);
  }
  return text;
}

// ---------------------------------------------------------------------------------------------
// Added tokens

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) {
  for (const AddedToken& token : tokens) {
    if (token.content.empty()) continue;  // can never match; tokenizers skips them as well
    int32_t node = 0;
    for (const char c : token.content) {
      const auto byte = static_cast<unsigned char>(c);
      auto found = nodes_[node].children.find(byte);
      if (found == nodes_[node].children.end()) {
        nodes_.push_back(Node{});
        const auto child = static_cast<int32_t>(nodes_.size() - 1);
        nodes_[node].children.emplace(byte, child);
        node = child;
      } else {
        node = found->second;
      }
    }
    // The first definition of a content wins, as in the tokenizers' vocabulary.
    if (nodes_[node].token < 0) {
      nodes_[node].token = static_cast<int32_t>(tokens_.size());
      tokens_.push_back(token);
      can_start_[static_cast<unsigned char>(token.content[0])] = true;
    }
  }
}

std::optional<AddedTokenMatcher::Match> AddedTokenMatcher::longest_at(std::string_view text,
                                                                      size_t pos) const {
  std::optional<Match> best;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& children = nodes_[node].children;
    auto found = children.find(static_cast<unsigned char>(text[i]));
    if (found == children.end()) break;
    node = found->second;
    if (nodes_[node].token >= 0) best = Match{pos, i + 1, static_cast<size_t>(nodes_[node].token)};
  }
  return best;
}

namespace {

// Start of the code point that ends right before `end` (text is valid UTF-8).
size_t previous_code_point_start(std::string_view text, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return start;
}

}  // namespace

std::vector<TextPiece> AddedTokenMatcher::split(std::string_view text) const {
  std::vector<TextPiece> pieces;
  if (empty()) {
    if (!text.empty()) pieces.push_back({text, std::nullopt});
    return pieces;
  }
  size_t plain_begin = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    std::optional<Match> match;
    if (can_start_[static_cast<unsigned char>(text[pos])]) match = longest_at(text, pos);
    if (!match) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[match->token_index];
    size_t begin = match->begin;
    size_t end = match->end;
    if (token.lstrip) {
      while (begin > plain_begin) {
        const size_t prev = previous_code_point_start(text, begin);
        size_t cursor = prev;
        if (!is_unicode_whitespace(next_code_point(text, cursor))) break;
        begin = prev;
      }
    }
    if (token.rstrip) {
      while (end < text.size()) {
        size_t cursor = end;
        if (!is_unicode_whitespace(next_code_point(text, cursor))) break;
        end = cursor;
      }
    }
    if (begin > plain_begin) pieces.push_back({text.substr(plain_begin, begin - plain_begin), {}});
    pieces.push_back({text.substr(begin, end - begin), token.id});
    pos = plain_begin = end;
  }
  if (plain_begin < text.size()) pieces.push_back({text.substr(plain_begin), std::nullopt});
  return pieces;
}

// ---------------------------------------------------------------------------------------------
// JSON helpers

namespace {

bool optional_bool(const json& object, const char* key, bool fallback, const std::string& source) {
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return fallback;
  if (!found->is_boolean())
    fail(ErrorKind::kFormat, source, ": field '", key, "' must be true or false, found ",
         found->type_name(), " ", found->dump());
  return found->get<bool>();
}

// A token given as "text" or as an AddedToken-like object {"content": "text", ...}.
std::string token_content(const json& value, const std::string& source) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object()) {
    auto content = value.find("content");
    if (content != value.end() && content->is_string()) return content->get<std::string>();
  }
  fail(ErrorKind::kFormat, source,
       ": expected a token string or an object with a string \"content\", found ",
       value.type_name(), " ", value.dump());
}

AddedToken parse_added_token(const json& entry, const std::string& source,
                             std::optional<int64_t> id_from_key) {
  if (!entry.is_object())
    fail(ErrorKind::kFormat, source, ": expected an object, found ", entry.type_name());
  AddedToken token;
  if (id_from_key) {
    token.id = *id_from_key;
  } else {
    auto id = entry.find("id");
    if (id == entry.end() || !id->is_number_integer() || id->get<int64_t>() < 0)
      fail(ErrorKind::kFormat, source, ": field 'id' must be a non-negative integer, found ",
           id == entry.end() ? std::string("nothing") : id->dump());
    token.id = id->get<int64_t>();
  }
  auto content = entry.find("content");
  if (content == entry.end() || !content->is_string())
    fail(ErrorKind::kFormat, source, ": field 'content' must be a string, found ",
         content == entry.end() ? std::string("nothing") : content->dump());
  token.content = content->get<std::string>();
  if (find_invalid_utf8(token.content))
    fail(ErrorKind::kFormat, source, ": token content is not valid UTF-8");
  token.special = optional_bool(entry, "special", false, source);
  token.lstrip = optional_bool(entry, "lstrip", false, source);
  token.rstrip = optional_bool(entry, "rstrip", false, source);
  token.special_from_file = entry.contains("special") && !entry["special"].is_null();
  token.normalized = optional_bool(entry, "normalized", !token.special, source);
  if (optional_bool(entry, "single_word", false, source))
    fail(ErrorKind::kFormat, source, ": added token '", token.content,
         "' has single_word=true, which softprompt does not implement");
  return token;
}

void read_named(const json& object, const std::string& file, const char* key, NamedToken& named) {
  if (named.mentioned) return;  // an earlier file already decided
  auto found = object.find(key);
  if (found == object.end()) return;
  named.mentioned = true;
  named.source = file + " field '" + key + "'";
  if (!found->is_null()) named.content = token_content(*found, named.source);
}

void read_special_list(const json& object, const std::string& file, const char* key,
                       std::vector<std::pair<std::string, std::string>>& out) {
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return;
  const std::string source = file + " field '" + key + "'";
  if (found->is_array()) {
    for (const json& entry : *found) out.emplace_back(token_content(entry, source), source);
  } else if (found->is_object()) {
    // transformers 5 also allows named extra tokens: {"image_token": "<image>", ...}.
    for (const auto& [name, entry] : found->items())
      out.emplace_back(token_content(entry, source + "." + name), source + "." + name);
  } else {
    fail(ErrorKind::kFormat, source, ": expected a list of tokens, found ", found->type_name());
  }
}

json read_json_object(const std::string& path) {
  json doc = read_json_file(path);
  if (!doc.is_object())
    fail(ErrorKind::kFormat, path, ": expected a JSON object, found ", doc.type_name());
  return doc;
}

std::optional<int64_t> config_token_id(const json& config, const char* key) {
  auto found = config.find(key);
  // Lists (several eos ids) are a generation setting, not a tokenizer one.
  if (found == config.end() || !found->is_number_integer()) return std::nullopt;
  return found->get<int64_t>();
}

}  // namespace

bool special_flag_from_file(const std::vector<AddedToken>& added, int64_t id) {
  return std::any_of(added.begin(), added.end(),
                     [&](const AddedToken& a) { return a.id == id && a.special_from_file; });
}

std::vector<AddedToken> collect_added_tokens(const json& doc, const std::string& source,
                                             const SpecialTokenSettings& settings) {
  std::vector<AddedToken> added;
  if (auto list = doc.find("added_tokens"); list != doc.end() && !list->is_null())
    added = parse_added_tokens(*list, source);
  for (const auto* extra : {&settings.added_tokens_decoder, &settings.legacy_added_tokens}) {
    for (const AddedToken& token : *extra) {
      const bool known = std::any_of(added.begin(), added.end(),
                                     [&](const AddedToken& a) { return a.id == token.id; });
      if (!known) added.push_back(token);
    }
  }
  return added;
}

std::vector<AddedToken> parse_added_tokens(const json& list, const std::string& source) {
  if (!list.is_array())
    fail(ErrorKind::kFormat, source, ": 'added_tokens' must be a list, found ", list.type_name());
  std::vector<AddedToken> tokens;
  for (size_t i = 0; i < list.size(); ++i)
    tokens.push_back(
        parse_added_token(list[i], str_cat(source, ": added_tokens[", i, "]"), std::nullopt));
  return tokens;
}

SpecialTokenSettings read_special_token_settings(const std::string& model_dir) {
  SpecialTokenSettings settings;
  const fs::path dir(model_dir);

  const std::string config_path = (dir / "tokenizer_config.json").string();
  if (path_exists(config_path)) {
    const json config = read_json_object(config_path);
    read_named(config, config_path, "bos_token", settings.bos);
    read_named(config, config_path, "eos_token", settings.eos);
    read_named(config, config_path, "unk_token", settings.unk);
    read_named(config, config_path, "pad_token", settings.pad);
    read_special_list(config, config_path, "additional_special_tokens",
                      settings.additional_special);
    read_special_list(config, config_path, "extra_special_tokens", settings.additional_special);
    if (auto decoder = config.find("added_tokens_decoder");
        decoder != config.end() && !decoder->is_null()) {
      if (!decoder->is_object())
        fail(ErrorKind::kFormat, config_path, ": field 'added_tokens_decoder' must be an object");
      for (const auto& [key, entry] : decoder->items()) {
        const std::string source = config_path + ": added_tokens_decoder[\"" + key + "\"]";
        int64_t id = -1;
        try {
          size_t used = 0;
          id = std::stoll(key, &used);
          if (used != key.size()) id = -1;
        } catch (const std::exception&) {
          id = -1;
        }
        if (id < 0) fail(ErrorKind::kFormat, source, ": key must be a non-negative integer id");
        settings.added_tokens_decoder.push_back(parse_added_token(entry, source, id));
      }
    }
    if (auto extra = config.find("extra_ids"); extra != config.end() && !extra->is_null()) {
      if (!extra->is_number_integer() || extra->get<int64_t>() < 0)
        fail(ErrorKind::kFormat, config_path,
             ": field 'extra_ids' must be a non-negative integer, found ", extra->dump());
      settings.extra_ids = extra->get<int64_t>();
    }
    settings.clean_up_tokenization_spaces =
        optional_bool(config, "clean_up_tokenization_spaces", false, config_path);
    if (auto prefix = config.find("add_prefix_space"); prefix != config.end() && !prefix->is_null())
      settings.add_prefix_space = optional_bool(config, "add_prefix_space", false, config_path);
    settings.add_bos_token = optional_bool(config, "add_bos_token", false, config_path);
    settings.add_eos_token = optional_bool(config, "add_eos_token", false, config_path);
    if (auto legacy = config.find("legacy"); legacy != config.end() && !legacy->is_null())
      settings.legacy = optional_bool(config, "legacy", false, config_path);
    if (auto name = config.find("tokenizer_class"); name != config.end() && !name->is_null()) {
      if (!name->is_string())
        fail(ErrorKind::kFormat, config_path, ": field 'tokenizer_class' must be a string, found ",
             name->dump());
      settings.tokenizer_class = name->get<std::string>();
    }
  }

  const std::string map_path = (dir / "special_tokens_map.json").string();
  if (path_exists(map_path)) {
    const json map = read_json_object(map_path);
    read_named(map, map_path, "bos_token", settings.bos);
    read_named(map, map_path, "eos_token", settings.eos);
    read_named(map, map_path, "unk_token", settings.unk);
    read_named(map, map_path, "pad_token", settings.pad);
    read_special_list(map, map_path, "additional_special_tokens", settings.additional_special);
  }

  const std::string legacy_path = (dir / "added_tokens.json").string();
  if (path_exists(legacy_path)) {
    const json legacy = read_json_object(legacy_path);
    for (const auto& [content, id] : legacy.items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0)
        fail(ErrorKind::kFormat, legacy_path, ": token '", content,
             "' must map to a non-negative integer id, found ", id.dump());
      AddedToken token;
      token.id = id.get<int64_t>();
      token.content = content;
      token.normalized = true;  // HF's default for non-special added tokens
      settings.legacy_added_tokens.push_back(std::move(token));
    }
  }

  const std::string model_config_path = (dir / "config.json").string();
  if (path_exists(model_config_path)) {
    const json config = read_json_object(model_config_path);
    settings.config_bos_id = config_token_id(config, "bos_token_id");
    settings.config_eos_id = config_token_id(config, "eos_token_id");
    settings.config_pad_id = config_token_id(config, "pad_token_id");
  }
  return settings;
}

void mark_special_tokens(std::vector<AddedToken>& added, const ResolvedSpecials& specials,
                         const SpecialTokenSettings& settings,
                         const std::function<std::optional<int64_t>(std::string_view)>& lookup,
                         const std::function<std::optional<std::string>(int64_t)>& vocab_token,
                         const std::string& source) {
  const auto mark = [&](int64_t id, const std::string& content) {
    for (AddedToken& a : added) {
      if (a.id == id) {
        a.special = true;
        return;
      }
    }
    AddedToken token;
    token.id = id;
    token.content = content;
    token.special = true;
    added.push_back(std::move(token));
  };
  for (const auto& id : {specials.bos, specials.eos, specials.unk, specials.pad}) {
    if (!id) continue;
    auto in_added =
        std::find_if(added.begin(), added.end(), [&](const AddedToken& a) { return a.id == *id; });
    if (in_added != added.end()) {
      mark(*id, in_added->content);
      continue;
    }
    const std::optional<std::string> text = vocab_token(*id);
    if (!text)
      fail(ErrorKind::kFormat, source, ": special token id ", *id,
           " (from config.json) is not assigned to any token");
    mark(*id, *text);
  }
  for (const auto& [content, where] : settings.additional_special) {
    auto id = lookup(content);
    if (!id)
      fail(ErrorKind::kFormat, where, ": token '", content,
           "' is neither in the vocabulary nor an added token");
    if (!special_flag_from_file(added, *id)) mark(*id, content);
  }
}

ResolvedSpecials resolve_named_tokens(
    const SpecialTokenSettings& settings, const NamedDefaults& defaults, int64_t vocab_size,
    const std::function<std::optional<int64_t>(std::string_view)>& lookup) {
  const auto one = [&](const NamedToken& named, std::optional<int64_t> family_default,
                       std::optional<int64_t> config_id,
                       const char* config_key) -> std::optional<int64_t> {
    if (named.mentioned) {
      if (!named.content) return std::nullopt;
      if (auto id = lookup(*named.content)) return id;
      fail(ErrorKind::kFormat, named.source, ": token '", *named.content,
           "' is neither in the vocabulary nor an added token");
    }
    if (family_default) return family_default;
    if (config_id) {
      if (*config_id < 0 || *config_id >= vocab_size)
        fail(ErrorKind::kFormat, "config.json field '", config_key, "': ", *config_id,
             " is outside the tokenizer's vocabulary [0, ", vocab_size, ")");
      return config_id;
    }
    return std::nullopt;
  };
  ResolvedSpecials resolved;
  resolved.bos = one(settings.bos, defaults.bos, settings.config_bos_id, "bos_token_id");
  resolved.eos = one(settings.eos, defaults.eos, settings.config_eos_id, "eos_token_id");
  resolved.unk = one(settings.unk, defaults.unk, std::nullopt, "");
  resolved.pad = one(settings.pad, defaults.pad, settings.config_pad_id, "pad_token_id");
  return resolved;
}

namespace {

void append_template_items(const json& processor, const std::string& source, TemplateIds& out) {
  if (processor.is_null()) return;
  if (!processor.is_object())
    fail(ErrorKind::kFormat, source, ": 'post_processor' must be an object or null");
  const std::string type = processor.value("type", std::string());
  if (type == "ByteLevel") return;  // offsets only; adds no token
  if (type == "Sequence") {
    auto list = processor.find("processors");
    if (list == processor.end() || !list->is_array())
      fail(ErrorKind::kFormat, source, ": post_processor Sequence needs a 'processors' list");
    for (const json& inner : *list) append_template_items(inner, source, out);
    return;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    const auto id_of = [&](const char* key) {
      auto entry = processor.find(key);
      if (entry == processor.end() || !entry->is_array() || entry->size() != 2 ||
          !(*entry)[1].is_number_integer())
        fail(ErrorKind::kFormat, source, ": post_processor ", type, " field '", key,
             "' must be [token, id]");
      return (*entry)[1].get<int64_t>();
    };
    out.prefix.push_back(id_of("cls"));
    out.suffix.push_back(id_of("sep"));
    return;
  }
  if (type != "TemplateProcessing")
    fail(ErrorKind::kFormat, source, ": unsupported post_processor type '", type,
         "' (supported: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, "
         "Sequence)");
  auto single = processor.find("single");
  auto specials = processor.find("special_tokens");
  if (single == processor.end() || !single->is_array())
    fail(ErrorKind::kFormat, source, ": TemplateProcessing needs a 'single' list");
  bool seen_sequence = false;
  for (const json& item : *single) {
    if (item.contains("Sequence")) {
      if (seen_sequence)
        fail(ErrorKind::kFormat, source, ": TemplateProcessing 'single' names the sequence twice");
      seen_sequence = true;
      continue;
    }
    auto special = item.find("SpecialToken");
    if (special == item.end() || !special->is_object() || !special->contains("id") ||
        !(*special)["id"].is_string())
      fail(ErrorKind::kFormat, source, ": TemplateProcessing item ", item.dump(),
           " is neither {\"Sequence\": ...} nor {\"SpecialToken\": {\"id\": ...}}");
    const std::string name = (*special)["id"].get<std::string>();
    if (specials == processor.end() || !specials->is_object() || !specials->contains(name))
      fail(ErrorKind::kFormat, source, ": TemplateProcessing uses '", name,
           "' but 'special_tokens' does not define it");
    const json& ids = (*specials)[name]["ids"];
    if (!ids.is_array())
      fail(ErrorKind::kFormat, source, ": special_tokens['", name, "'].ids must be a list");
    for (const json& id : ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0)
        fail(ErrorKind::kFormat, source, ": special_tokens['", name,
             "'].ids must hold non-negative integers, found ", id.dump());
      (seen_sequence ? out.suffix : out.prefix).push_back(id.get<int64_t>());
    }
  }
  if (!seen_sequence)
    fail(ErrorKind::kFormat, source, ": TemplateProcessing 'single' has no {\"Sequence\"} item");
}

}  // namespace

TemplateIds parse_template_processing(const json& post_processor, const std::string& source) {
  TemplateIds ids;
  append_template_items(post_processor, source, ids);
  return ids;
}

}  // namespace tokenizer_detail

// ---------------------------------------------------------------------------------------------

namespace {

// Whether a BPE tokenizer.json works on characters with "▁" marks and byte fallback (Llama 2,
// Mistral) rather than on GPT-2's byte alphabet: byte_fallback, or a SentencePiece-kind component.
bool is_sentencepiece_style_bpe(const json& model, const json& doc) {
  if (auto fallback = model.find("byte_fallback");
      fallback != model.end() && fallback->is_boolean() && fallback->get<bool>())
    return true;
  const auto mentions = [&](const char* component, std::initializer_list<std::string_view> types) {
    auto found = doc.find(component);
    if (found == doc.end() || !found->is_object()) return false;
    const std::string text = found->dump();
    return std::any_of(types.begin(), types.end(), [&](std::string_view type) {
      return text.find(str_cat("\"type\":\"", type, "\"")) != std::string::npos;
    });
  };
  return mentions("pre_tokenizer", {"Metaspace"}) || mentions("normalizer", {"Prepend"}) ||
         mentions("decoder", {"ByteFallback", "Metaspace"});
}

// transformers 5's LlamaTokenizer (what Llama 2 and Mistral directories name) keeps only the
// vocabulary, merges and post-processor of tokenizer.json and builds the rest itself: no
// normalizer, a Metaspace pre-tokenizer prepending "▁" always (legacy) or only to the text's start
// (the default) or never (add_prefix_space false), and the matching decoder. Its template stays
// the file's whatever tokenizer_config.json's add_bos_token / add_eos_token say (as transformers
// 5).
json as_llama_tokenizer_class(json doc, const tokenizer_detail::SpecialTokenSettings& settings) {
  const bool prefix_space = settings.add_prefix_space.value_or(true);
  const std::string prepend =
      !prefix_space ? "never" : (settings.legacy.value_or(false) ? "always" : "first");
  constexpr const char* kMark = "\xe2\x96\x81";  // U+2581, SentencePiece's word mark
  doc["normalizer"] = nullptr;
  doc["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", kMark}, {"prepend_scheme", prepend}, {"split", false}};
  json steps =
      json::array({{{"type", "Replace"}, {"pattern", {{"String", kMark}}}, {"content", " "}},
                   {{"type", "ByteFallback"}},
                   {{"type", "Fuse"}}});
  if (prefix_space)
    steps.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  doc["decoder"] = {{"type", "Sequence"}, {"decoders", steps}};
  return doc;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir) {
  std::error_code ec;
  if (!fs::exists(model_dir, ec))
    fail(ErrorKind::kIo, "load_tokenizer: model directory '", model_dir, "' does not exist");
  if (!fs::is_directory(model_dir, ec))
    fail(ErrorKind::kIo, "load_tokenizer: '", model_dir, "' is not a directory");
  const fs::path dir(model_dir);
  const auto has = [&](const char* name) { return path_exists((dir / name).string()); };

  if (has("spiece.model")) {
    return SentencePieceTokenizer::load(model_dir,
                                        tokenizer_detail::read_special_token_settings(model_dir));
  }
  if (has("tokenizer.json")) {
    const std::string path = (dir / "tokenizer.json").string();
    json doc = read_json_file(path);
    if (!doc.is_object())
      fail(ErrorKind::kFormat, path, ": expected a JSON object, found ", doc.type_name());
    auto model = doc.find("model");
    if (model == doc.end() || !model->is_object())
      fail(ErrorKind::kFormat, path, ": missing the 'model' object");
    std::string type;
    if (auto found = model->find("type"); found != model->end() && found->is_string()) {
      type = found->get<std::string>();
    } else if (model->contains("merges")) {
      type = "BPE";  // tokenizers writes untagged models in some old files; merges mean BPE
    } else {
      fail(ErrorKind::kFormat, path, ": model has no 'type' field");
    }
    if (type == "BPE" && is_sentencepiece_style_bpe(*model, doc)) {
      auto settings = tokenizer_detail::read_special_token_settings(model_dir);
      const std::string cls = settings.tokenizer_class.value_or("");
      if (cls == "LlamaTokenizer" || cls == "LlamaTokenizerFast")
        doc = as_llama_tokenizer_class(std::move(doc), settings);
      return BpeByteFallbackTokenizer::from_tokenizer_json(doc, path, settings);
    }
    if (type == "BPE")
      return BpeTokenizer::from_tokenizer_json(
          doc, path, tokenizer_detail::read_special_token_settings(model_dir));
    fail(ErrorKind::kFormat, path, ": model.type '", type,
         "' is not supported (supported: 'BPE' = byte-level or byte-fallback BPE; a SentencePiece "
         "tokenizer needs "
         "spiece.model, which is not in '",
         model_dir, "')");
  }
  const bool vocab = has("vocab.json");
  const bool merges = has("merges.txt");
  if (vocab && merges)
    return BpeTokenizer::from_vocab_merges(
        (dir / "vocab.json").string(), (dir / "merges.txt").string(),
        tokenizer_detail::read_special_token_settings(model_dir));
  fail(ErrorKind::kIo, "load_tokenizer: no tokenizer in '", model_dir,
       "': looked for spiece.model (SentencePiece), tokenizer.json (BPE) and vocab.json + "
       "merges.txt (byte-level BPE)",
       vocab ? "; found vocab.json but not merges.txt" : "",
       merges ? "; found merges.txt but not vocab.json" : "");
}

}  // namespace sp
