// The OpenAI-compatible JSON of `softprompt serve`: completion requests parsed with one clear
// error per bad field, and the response, stream-chunk and error objects.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "peft/generation_service.h"

namespace sp::cli {

/// A parsed POST /v1/completions body.
struct CompletionCall {
  std::string model;  ///< as the client named it (an adapter or the base model's id)
  CompletionRequest request;
  bool stream = false;
};

/// Parses a /v1/completions body; `base_model` is the id that means "no adapter". Throws
/// ServiceError 400 naming the field for anything malformed or unsupported.
CompletionCall parse_completion_call(const std::string& body, const std::string& base_model);

/// {"error": {"message", "type", "param": null, "code": status}}.
nlohmann::json error_json(const ServiceError& error);

/// The text_completion object: whole (finish_reason and usage set) or one stream chunk.
nlohmann::json completion_json(const std::string& id, int64_t created, const std::string& model,
                               const std::string& text, const CompletionUpdate* final_update);

/// Compact JSON; invalid UTF-8 becomes U+FFFD instead of an exception.
std::string dump_json(const nlohmann::json& data);

/// One server-sent event line pair: "data: <json>\n\n".
std::string sse_event(const nlohmann::json& data);

}  // namespace sp::cli
