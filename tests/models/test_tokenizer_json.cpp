// Llama-family tokenizer.json parity with Hugging Face (golden cases written by
// scripts/fixtures/tokjson_fixtures.py) and the errors for unsupported or malformed components.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/error.h"
#include "models/tokenizer.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kFixtures = SOFTPROMPT_FIXTURES;

json read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path;
  return json::parse(in);
}

const json& golden_cases() {
  static const json cases = read_json(kFixtures / "golden" / "tokenizer_json_cases.json")["cases"];
  return cases;
}

const json& golden_case(const std::string& name) {
  for (const json& c : golden_cases())
    if (c["name"] == name) return c;
  static const json none;
  ADD_FAILURE() << "no golden case named " << name;
  return none;
}

// Compares every text of golden case `name` on `tok`: encode with and without special tokens,
// decode of the full ids with and without skipping special tokens. only_nfc: only the texts NFC
// leaves unchanged.
void check_golden_on(const sp::Tokenizer& tok_ref, const std::string& name, bool only_nfc) {
  const sp::Tokenizer* tok = &tok_ref;
  const json& c = golden_case(name);
  ASSERT_TRUE(c.is_object());
  EXPECT_EQ(tok->vocab_size(), c["vocab_size"].get<int64_t>());
  ASSERT_GE(c["encode"].size(), 20u);
  for (const json& e : c["encode"]) {
    if (only_nfc && !e["text_is_nfc"].get<bool>()) continue;
    const std::string text = e["text"].get<std::string>();
    const auto ids = e["ids"].get<std::vector<int64_t>>();
    const auto plain = e["ids_without_special"].get<std::vector<int64_t>>();
    EXPECT_EQ(tok->encode(text, true), ids) << name << ": encode '" << text << "'";
    EXPECT_EQ(tok->encode(text, false), plain) << name << ": encode (no specials) '" << text << "'";
    EXPECT_EQ(tok->decode(ids, false), e["decoded"].get<std::string>())
        << name << ": decode of '" << text << "'";
    EXPECT_EQ(tok->decode(ids, true), e["decoded_skip_special"].get<std::string>())
        << name << ": decode (skip specials) of '" << text << "'";
  }
}

void check_golden(const std::string& name) {
  const json& c = golden_case(name);
  ASSERT_TRUE(c.is_object());
  auto tok = sp::load_tokenizer((kFixtures / c["dir"].get<std::string>()).string());
  check_golden_on(*tok, name, false);
}

using TempDir = sp::testing::ScopedTempDir;

// A copy of fixture `name` whose tokenizer.json is patched (RFC 7386 merge patch).
void write_patched(const TempDir& dir, const std::string& name, const json& patch) {
  const fs::path src = kFixtures / "tokenizers" / name;
  json doc = read_json(src / "tokenizer.json");
  doc.merge_patch(patch);
  dir.write("tokenizer.json", doc.dump());
  std::ifstream config(src / "tokenizer_config.json", std::ios::binary);
  std::ostringstream text;
  text << config.rdbuf();
  dir.write("tokenizer_config.json", text.str());
}

// Runs fn, which must throw sp::Error of kFormat whose message contains every fragment.
template <class Fn>
void expect_format_error(Fn&& fn, const std::vector<std::string>& fragments) {
  try {
    fn();
    ADD_FAILURE() << "expected an sp::Error containing '" << fragments.front() << "'";
  } catch (const sp::Error& error) {
    EXPECT_EQ(static_cast<int>(error.kind()), static_cast<int>(sp::ErrorKind::kFormat))
        << error.what();
    const std::string message = error.what();
    for (const std::string& fragment : fragments)
      EXPECT_NE(message.find(fragment), std::string::npos)
          << "'" << fragment << "' not in: " << message;
  }
}

TEST(TokenizerJsonGolden, Llama3ByteLevelBpe) {
  check_golden("llama3_bpe");
}

TEST(TokenizerJsonGolden, Llama3SpecialTokensAndPrefix) {
  auto tok = sp::load_tokenizer((kFixtures / "tokenizers" / "llama3_bpe").string());
  EXPECT_EQ(tok->kind(), "byte-level BPE");
  ASSERT_TRUE(tok->bos_id());
  EXPECT_EQ(*tok->bos_id(), tok->token_to_id("<|begin_of_text|>"));
  ASSERT_TRUE(tok->eos_id());
  EXPECT_EQ(*tok->eos_id(), tok->token_to_id("<|end_of_text|>"));
  const auto ids = tok->encode("Hello", true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), *tok->bos_id());
}

// The golden cases must be able to fail: the same vocabulary with the GPT-2 pre-tokenizer (no
// punctuation prefix on words, digits not grouped by three) tokenizes some of them differently.
TEST(TokenizerJsonGolden, Llama3RegexMatters) {
  TempDir dir;
  write_patched(dir, "llama3_bpe",
                {{"pre_tokenizer",
                  {{"type", "ByteLevel"},
                   {"add_prefix_space", false},
                   {"trim_offsets", false},
                   {"use_regex", true}}}});
  auto gpt2_style = sp::load_tokenizer(dir.str());
  auto llama3 = sp::load_tokenizer((kFixtures / "tokenizers" / "llama3_bpe").string());
  int differing = 0;
  for (const json& e : golden_case("llama3_bpe")["encode"]) {
    const std::string text = e["text"].get<std::string>();
    differing += gpt2_style->encode(text, false) != llama3->encode(text, false);
  }
  EXPECT_GE(differing, 1);
}

// Qwen2: its regex, added tokens and the NFC normalizer, on every golden text (two of them change
// under NFC: a decomposed accent and a compatibility sequence).
TEST(TokenizerJsonGolden, Qwen2ByteLevelBpeWithNfc) {
  const json& c = golden_case("qwen2_bpe");
  int changed = 0;
  for (const json& e : c["encode"]) changed += e["text_is_nfc"].get<bool>() ? 0 : 1;
  EXPECT_GE(changed, 1) << "the goldens must include text that NFC changes";
  check_golden("qwen2_bpe");
}

// Without the normalizer, the texts NFC changes encode differently: the normalizer is exercised.
TEST(TokenizerJsonGolden, Qwen2WithoutNfcDiffersOnDecomposedText) {
  TempDir dir;
  write_patched(dir, "qwen2_bpe", {{"normalizer", nullptr}});
  auto without = sp::load_tokenizer(dir.str());
  auto with = sp::load_tokenizer((kFixtures / "tokenizers" / "qwen2_bpe").string());
  int differing = 0;
  for (const json& e : golden_case("qwen2_bpe")["encode"]) {
    const std::string text = e["text"].get<std::string>();
    if (!e["text_is_nfc"].get<bool>()) differing += with->encode(text) != without->encode(text);
  }
  EXPECT_GE(differing, 1);
}

TEST(TokenizerJsonGolden, Llama2ByteFallbackBpe) {
  check_golden("llama2_byte_fallback");
}
// Llama 2 / Mistral directories name LlamaTokenizer, whose pre-tokenizer and decoder transformers 5
// builds itself from "legacy" and "add_prefix_space" (ignoring tokenizer.json's): leading spaces
// and text after special tokens then tokenize differently from the file's own pipeline.
TEST(TokenizerJsonGolden, LlamaTokenizerClassLegacy) {
  check_golden("llama2_llama_tokenizer_legacy");
}
TEST(TokenizerJsonGolden, LlamaTokenizerClass) {
  check_golden("llama2_llama_tokenizer");
}

// transformers 5 keeps the file's template for LlamaTokenizer even when tokenizer_config.json
// says add_bos_token false and add_eos_token true (checked with transformers 5.24): still BOS only.
TEST(TokenizerJsonGolden, LlamaTokenizerClassKeepsTheFilesTemplate) {
  TempDir dir;
  write_patched(dir, "llama2_llama_tokenizer", json::object());
  json config =
      read_json(kFixtures / "tokenizers" / "llama2_llama_tokenizer" / "tokenizer_config.json");
  config["add_bos_token"] = false;
  config["add_eos_token"] = true;
  dir.write("tokenizer_config.json", config.dump());
  auto tok = sp::load_tokenizer(dir.str());
  for (const json& e : golden_case("llama2_llama_tokenizer")["encode"])
    EXPECT_EQ(tok->encode(e["text"].get<std::string>()), e["ids"].get<std::vector<int64_t>>())
        << e["text"];
}

TEST(TokenizerJsonGolden, MistralMetaspaceBpe) {
  check_golden("mistral_metaspace");
}

TEST(TokenizerJsonGolden, ByteFallbackKindAndSpecials) {
  for (const char* name : {"llama2_byte_fallback", "mistral_metaspace"}) {
    auto tok = sp::load_tokenizer((kFixtures / "tokenizers" / name).string());
    EXPECT_EQ(tok->kind(), "BPE with byte fallback") << name;
    EXPECT_EQ(tok->bos_id(), tok->token_to_id("<s>")) << name;
    EXPECT_EQ(tok->eos_id(), tok->token_to_id("</s>")) << name;
    EXPECT_EQ(tok->token_to_id("<0x0A>"), 13) << name;
    EXPECT_EQ(tok->id_to_token(13), "<0x0A>") << name;
    // An invalid byte run decodes to one U+FFFD per byte token, as tokenizers' ByteFallback.
    const std::vector<int64_t> broken = {*tok->token_to_id("<0xE6>"), *tok->token_to_id("<0x9D>")};
    EXPECT_EQ(tok->decode(broken), "\xEF\xBF\xBD\xEF\xBF\xBD") << name;
  }
}

// Without byte fallback the characters outside the vocabulary become one fused <unk>.
TEST(TokenizerJsonGolden, ByteFallbackOffFusesUnknowns) {
  TempDir dir;
  write_patched(dir, "llama2_byte_fallback", {{"model", {{"byte_fallback", false}}}});
  auto tok = sp::load_tokenizer(dir.str());
  const auto ids = tok->encode("\xF0\x9D\x94\x98\xF0\x9D\x94\xAB", false);  // two unknown letters
  const auto unk = *tok->token_to_id("<unk>");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), unk), 1);
}

TEST(TokenizerJsonErrors, UnsupportedByteFallbackComponents) {
  TempDir dir;
  write_patched(dir, "mistral_metaspace", {{"pre_tokenizer", {{"type", "Whitespace"}}}});
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "pre_tokenizer", "'Whitespace'"});
  write_patched(dir, "llama2_byte_fallback", {{"normalizer", {{"type", "NFKC"}}}});
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "normalizer", "'NFKC'"});
  write_patched(dir, "llama2_byte_fallback", {{"decoder", {{"type", "WordPiece"}}}});
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "decoder", "'WordPiece'"});
}

TEST(TokenizerJsonErrors, MalformedByteFallbackFields) {
  TempDir dir;
  json doc = read_json(kFixtures / "tokenizers" / "llama2_byte_fallback" / "tokenizer.json");
  doc["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", " +"}};
  dir.write("tokenizer.json", doc.dump());
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "normalizer.normalizers[1]", "pattern", "String"});
  doc = read_json(kFixtures / "tokenizers" / "llama2_byte_fallback" / "tokenizer.json");
  doc["decoder"]["decoders"][3]["start"] = "one";
  dir.write("tokenizer.json", doc.dump());
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "decoder.decoders[3]", "'start'", "\"one\""});
  doc = read_json(kFixtures / "tokenizers" / "mistral_metaspace" / "tokenizer.json");
  doc["pre_tokenizer"]["prepend_scheme"] = "sometimes";
  dir.write("tokenizer.json", doc.dump());
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "pre_tokenizer", "prepend_scheme", "'sometimes'"});
}

TEST(TokenizerJsonErrors, UnsupportedPreTokenizer) {
  TempDir dir;
  write_patched(dir, "llama3_bpe", {{"pre_tokenizer", {{"type", "Whitespace"}}}});
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "pre_tokenizer", "'Whitespace'"});
}

TEST(TokenizerJsonErrors, UnsupportedPreTokenizerInsideSequence) {
  TempDir dir;
  write_patched(
      dir, "llama3_bpe",
      {{"pre_tokenizer",
        {{"type", "Sequence"},
         {"pretokenizers", json::array({{{"type", "Digits"}, {"individual_digits", true}},
                                        {{"type", "ByteLevel"}, {"use_regex", false}}})}}}});
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "pre_tokenizer.pretokenizers[0]", "'Digits'"});
}

TEST(TokenizerJsonErrors, UnsupportedNormalizer) {
  TempDir dir;
  write_patched(dir, "llama3_bpe", {{"normalizer", {{"type", "Lowercase"}}}});
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "normalizer", "'Lowercase'"});
}

TEST(TokenizerJsonErrors, MalformedSplit) {
  TempDir dir;
  json doc = read_json(kFixtures / "tokenizers" / "llama3_bpe" / "tokenizer.json");
  doc["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  dir.write("tokenizer.json", doc.dump());
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "Split", "behavior", "'Removed'", "Isolated"});
  doc["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Isolated";
  doc["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}};
  dir.write("tokenizer.json", doc.dump());
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "Split", "does not compile"});
  doc["pre_tokenizer"]["pretokenizers"][0]["pattern"] = 7;
  dir.write("tokenizer.json", doc.dump());
  expect_format_error([&] { sp::load_tokenizer(dir.str()); },
                      {"tokenizer.json", "Split", "pattern"});
}

}  // namespace
