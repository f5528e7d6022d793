// to_nfc: Unicode Normalization Form C of UTF-8 text (ICU), for tokenizer.json's NFC normalizer
// (Qwen2's tokenizers).
#pragma once

#include <string>
#include <string_view>

namespace sp {

/// The NFC form of valid UTF-8 `text` (composed characters: "e" + U+0301 -> U+00E9), as
/// Hugging Face tokenizers' NFC normalizer produces it.
std::string to_nfc(std::string_view text);

}  // namespace sp
