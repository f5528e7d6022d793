// to_nfc through ICU's normalizer: UTF-8 -> UTF-16 -> NFC -> UTF-8.
#include "models/unicode_nfc.h"

#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <vector>

#include "engine/error.h"

namespace sp {

namespace {

void check_icu(UErrorCode status, const char* call) {
  if (U_FAILURE(status))
    fail(ErrorKind::kInternal, "NFC normalization: ICU ", call, " failed: ", u_errorName(status));
}

}  // namespace

std::string to_nfc(std::string_view text) {
  if (text.empty()) return {};
  // ASCII is already in NFC: the common case costs one scan.
  bool ascii = true;
  for (unsigned char c : text) ascii = ascii && c < 0x80;
  if (ascii) return std::string(text);
  UErrorCode status = U_ZERO_ERROR;
  const UNormalizer2* nfc = unorm2_getNFCInstance(&status);
  check_icu(status, "unorm2_getNFCInstance");
  std::vector<UChar> utf16(text.size() + 1);  // UTF-8 never needs more UTF-16 units than bytes
  int32_t utf16_length = 0;
  u_strFromUTF8(utf16.data(), int32_t(utf16.size()), &utf16_length, text.data(),
                int32_t(text.size()), &status);
  check_icu(status, "u_strFromUTF8");
  // NFC can grow a string (up to 3x in UTF-16 for some scripts); ask, then retry with the size.
  std::vector<UChar> normalized(size_t(utf16_length) * 3 + 16);
  int32_t normalized_length = unorm2_normalize(nfc, utf16.data(), utf16_length, normalized.data(),
                                               int32_t(normalized.size()), &status);
  if (status == U_BUFFER_OVERFLOW_ERROR) {
    status = U_ZERO_ERROR;
    normalized.resize(size_t(normalized_length));
    normalized_length = unorm2_normalize(nfc, utf16.data(), utf16_length, normalized.data(),
                                         int32_t(normalized.size()), &status);
  }
  check_icu(status, "unorm2_normalize");
  std::string out(size_t(normalized_length) * 3, '\0');
  int32_t out_length = 0;
  u_strToUTF8(out.data(), int32_t(out.size()), &out_length, normalized.data(), normalized_length,
              &status);
  check_icu(status, "u_strToUTF8");
  out.resize(size_t(out_length));
  return out;
}

}  // namespace sp
