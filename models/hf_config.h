// HfConfig: typed, validated access to a Hugging Face config.json (or any JSON object file).
// Every failure names the file, the field, what was expected and what was found.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace sp {

/// A parsed JSON object with typed getters whose errors name the file and the field.
class HfConfig {
 public:
  /// Reads and parses `path`; the file must hold a JSON object.
  static HfConfig load(const std::string& path);
  static HfConfig from_json(const nlohmann::json& object, std::string source);

  const std::string& source() const { return source_; }
  bool has(const std::string& key) const;      ///< present and not null
  bool is_null(const std::string& key) const;  ///< absent or null

  int64_t get_int(const std::string& key) const;  ///< required
  int64_t get_int(const std::string& key, int64_t fallback) const;
  std::optional<int64_t> get_optional_int(const std::string& key) const;
  double get_double(const std::string& key) const;
  double get_double(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  /// A positive integer field (sizes, counts).
  int64_t get_positive_int(const std::string& key) const;
  int64_t get_positive_int(const std::string& key, int64_t fallback) const;

  const nlohmann::json& json() const { return *json_; }

 private:
  std::string source_;
  std::shared_ptr<const nlohmann::json> json_;
};

}  // namespace sp
