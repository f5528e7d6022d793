// Tokenizer throughput (bytes of UTF-8 input per second): GPT-2 byte-level BPE encode of
// tests/fixtures/corpus/english.txt with and without the word cache, and T5 SentencePiece encode.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "models/bpe_tokenizer.h"
#include "models/tokenizer.h"

namespace {

// The fixtures directory: the build's SOFTPROMPT_FIXTURES, else the environment variable of the
// same name, else the path relative to a run from the repository root.
std::string fixtures_dir() {
#ifdef SOFTPROMPT_FIXTURES
  return SOFTPROMPT_FIXTURES;
#else
  if (const char* env = std::getenv("SOFTPROMPT_FIXTURES")) return env;
  return "tests/fixtures";
#endif
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Encodes `text` whole per iteration (one long document).
void encode_document(benchmark::State& state, const sp::Tokenizer& tokenizer,
                     const std::string& text) {
  if (text.empty()) {
    state.SkipWithError("corpus not found: set SOFTPROMPT_FIXTURES");
    return;
  }
  size_t tokens = 0;
  for (auto _ : state) {
    const std::vector<int64_t> ids = tokenizer.encode(text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(tokens);
}

// Encodes the corpus one line at a time (how training examples are tokenized).
void encode_lines(benchmark::State& state, const sp::Tokenizer& tokenizer,
                  const std::string& text) {
  const std::vector<std::string> lines = split_lines(text);
  if (lines.empty()) {
    state.SkipWithError("corpus not found: set SOFTPROMPT_FIXTURES");
    return;
  }
  for (auto _ : state) {
    for (const std::string& line : lines) {
      const std::vector<int64_t> ids = tokenizer.encode(line);
      benchmark::DoNotOptimize(ids.data());
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}

std::unique_ptr<sp::BpeTokenizer> load_gpt2(size_t cache_words) {
  auto loaded = sp::load_tokenizer(fixtures_dir() + "/gpt2_tiny_a");
  std::unique_ptr<sp::BpeTokenizer> tokenizer(dynamic_cast<sp::BpeTokenizer*>(loaded.release()));
  tokenizer->set_cache_capacity(cache_words);
  return tokenizer;
}

void BM_BpeEncode_Cache(benchmark::State& state) {
  static const auto tokenizer = load_gpt2(sp::BpeTokenizer::kDefaultCacheCapacity);
  static const std::string text = read_file(fixtures_dir() + "/corpus/english.txt");
  tokenizer->encode(text);  // warm: the steady state of a long training run
  encode_document(state, *tokenizer, text);
}
BENCHMARK(BM_BpeEncode_Cache);

void BM_BpeEncode_NoCache(benchmark::State& state) {
  static const auto tokenizer = load_gpt2(0);
  static const std::string text = read_file(fixtures_dir() + "/corpus/english.txt");
  encode_document(state, *tokenizer, text);
}
BENCHMARK(BM_BpeEncode_NoCache);

void BM_BpeEncodeLines_Cache(benchmark::State& state) {
  static const auto tokenizer = load_gpt2(sp::BpeTokenizer::kDefaultCacheCapacity);
  static const std::string text = read_file(fixtures_dir() + "/corpus/english.txt");
  encode_lines(state, *tokenizer, text);
}
BENCHMARK(BM_BpeEncodeLines_Cache);

void BM_BpeEncodeLines_NoCache(benchmark::State& state) {
  static const auto tokenizer = load_gpt2(0);
  static const std::string text = read_file(fixtures_dir() + "/corpus/english.txt");
  encode_lines(state, *tokenizer, text);
}
BENCHMARK(BM_BpeEncodeLines_NoCache);

void BM_BpeDecode(benchmark::State& state) {
  static const auto tokenizer = load_gpt2(sp::BpeTokenizer::kDefaultCacheCapacity);
  static const std::string text = read_file(fixtures_dir() + "/corpus/english.txt");
  const std::vector<int64_t> ids = tokenizer->encode(text);
  for (auto _ : state) benchmark::DoNotOptimize(tokenizer->decode(ids).data());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}
BENCHMARK(BM_BpeDecode);

void BM_SentencePieceEncodeLines(benchmark::State& state) {
  static const auto tokenizer = sp::load_tokenizer(fixtures_dir() + "/t5_tiny_v10");
  static const std::string text = read_file(fixtures_dir() + "/corpus/t5_text.txt");
  encode_lines(state, *tokenizer, text);
}
BENCHMARK(BM_SentencePieceEncodeLines);

}  // namespace

BENCHMARK_MAIN();
