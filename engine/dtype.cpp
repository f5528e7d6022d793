// DType names, sizes and the IEEE binary16 conversions.
#include "engine/dtype.h"

#include "engine/error.h"

namespace sp {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return 4;
    case DType::BF16:
      return 2;
    case DType::F16:
      return 2;
    case DType::I32:
      return 4;
    case DType::I64:
      return 8;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return "F32";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
  }
  return "?";
}

bool dtype_is_float(DType dtype) {
  return dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16;
}

DType parse_dtype(std::string_view text) {
  if (text == "F32" || text == "float32" || text == "fp32") return DType::F32;
  if (text == "BF16" || text == "bfloat16" || text == "bf16") return DType::BF16;
  if (text == "F16" || text == "float16" || text == "fp16") return DType::F16;
  if (text == "I32" || text == "int32") return DType::I32;
  if (text == "I64" || text == "int64") return DType::I64;
  fail(ErrorKind::kInvalidArgument, "unknown dtype '", text,
       "': expected one of float32, bfloat16, float16, int32, int64");
}

float f16_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf/NaN
  if (exponent == 0) {
    if (mantissa == 0) return bits_to_float(sign);
    // Subnormal: value = mantissa * 2^-24, exact in float.
    float magnitude = float(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t float_to_f16(float value) {
  uint32_t bits = float_to_bits(value);
  uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN
  if (abs_bits >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to inf (>= 65520)
  if (abs_bits < 0x38800000u) {
    // Result is subnormal or zero: round abs * 2^24 to nearest even integer.
    float magnitude = bits_to_float(abs_bits);
    float scaled = magnitude * 16777216.0f;  // exact: power of two
    uint32_t whole = uint32_t(scaled);
    float fraction = scaled - float(whole);
    if (fraction > 0.5f || (fraction == 0.5f && (whole & 1u))) ++whole;
    return uint16_t(sign | whole);
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits, nearest even.
  uint32_t rebased = abs_bits - (112u << 23);
  uint32_t rounding = 0xfffu + ((rebased >> 13) & 1u);
  return uint16_t(sign | ((rebased + rounding) >> 13));
}

}  // namespace sp
