// Parsing and writing the OpenAI completion objects for `softprompt serve`.
#include "cli/serve_api.h"

namespace sp::cli {

namespace {

ServiceError bad_field(const std::string& field, const std::string& expected,
                       const nlohmann::json& found) {
  return ServiceError(
      400, "invalid_request_error",
      "'" + field + "' must be " + expected + ", found " +
          (found.is_string() ? "\"" + found.get<std::string>() + "\"" : found.dump()));
}

// The field's value, or nullptr when it is absent or null (OpenAI treats null as "default").
const nlohmann::json* field(const nlohmann::json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

int64_t integer_field(const nlohmann::json& body, const char* name, int64_t fallback) {
  const nlohmann::json* value = field(body, name);
  if (!value) return fallback;
  if (!value->is_number_integer()) throw bad_field(name, "an integer", *value);
  return value->get<int64_t>();
}

float number_field(const nlohmann::json& body, const char* name, float fallback) {
  const nlohmann::json* value = field(body, name);
  if (!value) return fallback;
  if (!value->is_number()) throw bad_field(name, "a number", *value);
  return value->get<float>();
}

}  // namespace

CompletionCall parse_completion_call(const std::string& body, const std::string& base_model) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(body);
  } catch (const nlohmann::json::parse_error& e) {
    throw ServiceError(400, "invalid_request_error",
                       std::string("the body is not valid JSON: ") + e.what());
  }
  if (!j.is_object())
    throw ServiceError(400, "invalid_request_error",
                       std::string("the body must be a JSON object, found ") + j.type_name());
  CompletionCall call;
  const nlohmann::json* model = field(j, "model");
  if (!model) throw ServiceError(400, "invalid_request_error", "'model' is required");
  if (!model->is_string()) throw bad_field("model", "a string", *model);
  call.model = model->get<std::string>();
  if (call.model != base_model) call.request.adapter = call.model;

  const nlohmann::json* prompt = field(j, "prompt");
  if (!prompt) throw ServiceError(400, "invalid_request_error", "'prompt' is required");
  const nlohmann::json* one = prompt;
  if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) one = &(*prompt)[0];
  if (one->is_string()) {
    call.request.prompt = one->get<std::string>();
  } else if (one->is_array() && std::all_of(one->begin(), one->end(), [](const nlohmann::json& v) {
               return v.is_number_integer();
             })) {
    call.request.prompt_ids = one->get<std::vector<int64_t>>();
  } else if (one->is_array() && !one->empty() && (*one)[0].is_string()) {
    throw ServiceError(400, "invalid_request_error",
                       "'prompt' holds " + std::to_string(one->size()) +
                           " prompts; this server takes one prompt per request");
  } else {
    throw bad_field("prompt", "a string or a list of token ids", *prompt);
  }

  call.request.max_tokens = integer_field(j, "max_tokens", 16);
  call.request.temperature = number_field(j, "temperature", 1.0f);
  call.request.top_p = number_field(j, "top_p", 1.0f);
  if (const nlohmann::json* seed = field(j, "seed")) {
    if (!seed->is_number_integer() || seed->get<int64_t>() < 0)
      throw bad_field("seed", "a non-negative integer", *seed);
    call.request.seed = seed->get<uint64_t>();
  }
  if (const nlohmann::json* stop = field(j, "stop")) {
    if (stop->is_string()) {
      call.request.stop = {stop->get<std::string>()};
    } else if (stop->is_array() &&
               std::all_of(stop->begin(), stop->end(),
                           [](const nlohmann::json& v) { return v.is_string(); })) {
      call.request.stop = stop->get<std::vector<std::string>>();
    } else {
      throw bad_field("stop", "a string or a list of strings", *stop);
    }
  }
  if (const nlohmann::json* stream = field(j, "stream")) {
    if (!stream->is_boolean()) throw bad_field("stream", "true or false", *stream);
    call.stream = stream->get<bool>();
  }
  if (const nlohmann::json* task = field(j, "task")) {
    if (task->is_string())
      call.request.task = task->get<std::string>();
    else if (task->is_number_integer())
      call.request.task = std::to_string(task->get<int64_t>());
    else
      throw bad_field("task", "a task name or id", *task);
  }
  // OpenAI options this server does not implement are refused, not silently ignored.
  if (integer_field(j, "n", 1) != 1 || integer_field(j, "best_of", 1) != 1)
    throw ServiceError(400, "invalid_request_error", "'n' and 'best_of' must be 1 on this server");
  if (const nlohmann::json* echo = field(j, "echo"); echo && *echo != false)
    throw ServiceError(400, "invalid_request_error", "'echo' is not supported");
  if (field(j, "logprobs"))
    throw ServiceError(400, "invalid_request_error", "'logprobs' is not supported");
  if (field(j, "suffix"))
    throw ServiceError(400, "invalid_request_error", "'suffix' is not supported");
  return call;
}

nlohmann::json error_json(const ServiceError& error) {
  return {{"error",
           {{"message", error.what()},
            {"type", error.type()},
            {"param", nullptr},
            {"code", error.status()}}}};
}

nlohmann::json completion_json(const std::string& id, int64_t created, const std::string& model,
                               const std::string& text, const CompletionUpdate* final_update) {
  nlohmann::json choice = {
      {"text", text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  nlohmann::json out = {{"id", id},
                        {"object", "text_completion"},
                        {"created", created},
                        {"model", model},
                        {"choices", nlohmann::json::array()}};
  if (final_update) {
    choice["finish_reason"] = final_update->finish_reason;
    out["usage"] = {
        {"prompt_tokens", final_update->prompt_tokens},
        {"completion_tokens", final_update->completion_tokens},
        {"total_tokens", final_update->prompt_tokens + final_update->completion_tokens}};
  }
  out["choices"].push_back(std::move(choice));
  return out;
}

std::string dump_json(const nlohmann::json& data) {
  // Text cut inside a character by a token limit must not make the whole response fail.
  return data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string sse_event(const nlohmann::json& data) {
  return "data: " + dump_json(data) + "\n\n";
}

}  // namespace sp::cli
