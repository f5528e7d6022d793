// HfConfig: JSON parsing with field-level errors.
#include "models/hf_config.h"

#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/error.h"
#include "engine/input_file.h"

namespace sp {

namespace {

const char* type_name(const nlohmann::json& value) {
  return value.type_name();
}

}  // namespace

HfConfig HfConfig::load(const std::string& path) {
  nlohmann::json doc = read_json_file(path);
  if (!doc.is_object())
    fail(ErrorKind::kFormat, path, ": expected a JSON object, found ", doc.type_name());
  return from_json(doc, path);
}

HfConfig HfConfig::from_json(const nlohmann::json& object, std::string source) {
  HfConfig config;
  config.source_ = std::move(source);
  config.json_ = std::make_shared<const nlohmann::json>(object);
  return config;
}

bool HfConfig::has(const std::string& key) const {
  return json_->contains(key) && !(*json_)[key].is_null();
}

bool HfConfig::is_null(const std::string& key) const {
  return !has(key);
}

int64_t HfConfig::get_int(const std::string& key) const {
  if (!has(key)) fail(ErrorKind::kFormat, source_, ": missing required field '", key, "'");
  const auto& value = (*json_)[key];
  if (!value.is_number_integer())
    fail(ErrorKind::kFormat, source_, ": field '", key, "' must be an integer, found ",
         type_name(value), " ", value.dump());
  return value.get<int64_t>();
}

int64_t HfConfig::get_int(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}

std::optional<int64_t> HfConfig::get_optional_int(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_int(key);
}

double HfConfig::get_double(const std::string& key) const {
  if (!has(key)) fail(ErrorKind::kFormat, source_, ": missing required field '", key, "'");
  const auto& value = (*json_)[key];
  if (!value.is_number())
    fail(ErrorKind::kFormat, source_, ": field '", key, "' must be a number, found ",
         type_name(value), " ", value.dump());
  return value.get<double>();
}

double HfConfig::get_double(const std::string& key, double fallback) const {
  return has(key) ? get_double(key) : fallback;
}

bool HfConfig::get_bool(const std::string& key, bool fallback) const {
  if (!has(key)) return fallback;
  const auto& value = (*json_)[key];
  if (!value.is_boolean())
    fail(ErrorKind::kFormat, source_, ": field '", key, "' must be true or false, found ",
         type_name(value), " ", value.dump());
  return value.get<bool>();
}

std::string HfConfig::get_string(const std::string& key) const {
  if (!has(key)) fail(ErrorKind::kFormat, source_, ": missing required field '", key, "'");
  const auto& value = (*json_)[key];
  if (!value.is_string())
    fail(ErrorKind::kFormat, source_, ": field '", key, "' must be a string, found ",
         type_name(value), " ", value.dump());
  return value.get<std::string>();
}

std::string HfConfig::get_string(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

int64_t HfConfig::get_positive_int(const std::string& key) const {
  int64_t value = get_int(key);
  if (value <= 0)
    fail(ErrorKind::kFormat, source_, ": field '", key, "' must be a positive integer, found ",
         value);
  return value;
}

int64_t HfConfig::get_positive_int(const std::string& key, int64_t fallback) const {
  return has(key) ? get_positive_int(key) : fallback;
}

}  // namespace sp
