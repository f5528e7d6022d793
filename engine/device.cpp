// Device names and parsing.
#include "engine/device.h"

#include <charconv>

#include "engine/error.h"

namespace sp {

Device Device::parse(std::string_view text) {
  if (text == "cpu") return cpu();
  if (text == "cuda-emu") return cuda_emu();
  if (text == "cuda") return cuda(0);
  if (text.starts_with("cuda:")) {
    int index = -1;
    auto digits = text.substr(5);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (ec == std::errc() && end == digits.data() + digits.size() && index >= 0) return cuda(index);
  }
  fail(ErrorKind::kInvalidArgument, "unknown device '", text,
       "': expected cpu, cuda-emu, cuda or cuda:N");
}

std::string Device::str() const {
  switch (kind) {
    case DeviceKind::CPU:
      return "cpu";
    case DeviceKind::CUDA_EMU:
      return "cuda-emu";
    case DeviceKind::CUDA:
      return index == 0 ? "cuda" : "cuda:" + std::to_string(index);
  }
  return "?";
}

}  // namespace sp
