// DType (the element types a Tensor can hold) and the exact float <-> bf16/f16 conversions.
// bf16 rounds to nearest-even like torch; f16 follows IEEE 754 binary16 with subnormals.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace sp {

/// Element types: the CPU computes in F32; ids and labels are I64.
enum class DType : uint8_t { F32, BF16, F16, I32, I64 };

/// Bytes per element.
size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  ///< "F32", "BF16", ... (the safetensors spelling)
/// True for F32, BF16 and F16.
bool dtype_is_float(DType dtype);
/// Parses "F32"/"float32"/"fp32", "BF16"/"bfloat16", "F16"/"float16"/"fp16", "I32", "I64".
/// Throws an Error naming the accepted spellings when the text is none of them.
DType parse_dtype(std::string_view text);

inline float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline uint32_t float_to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float bf16_to_float(uint16_t bits) {
  return bits_to_float(uint32_t(bits) << 16);
}

inline uint16_t float_to_bf16(float value) {
  uint32_t bits = float_to_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);  // quiet NaN
  uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t((bits + rounding_bias) >> 16);
}

float f16_to_float(uint16_t bits);
uint16_t float_to_f16(float value);

}  // namespace sp
