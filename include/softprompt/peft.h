// The PEFT layer's public API: PromptTuningConfig / MultitaskPromptTuningConfig, the prompt
// adapters, PeftModel (prompted forward, generation, adapters), and PEFT adapter directories.
#pragma once

#include "peft/adapter_io.h"                  // save_adapter(), read_adapter_files()
#include "peft/config.h"                      // PromptTuningConfig, MultitaskPromptTuningConfig
#include "peft/multitask_prompt_embedding.h"  // MultitaskPromptEmbedding
#include "peft/peft_model.h"                  // PeftModel, PeftBatch, PeftOutput
#include "peft/prompt_adapter.h"              // PromptAdapter, make_prompt_adapter()
#include "peft/prompt_embedding.h"            // PromptEmbedding
