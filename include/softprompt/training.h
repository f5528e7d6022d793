// What a training loop needs around the model: AdamW and LR schedules, JSONL data with
// tokenization and batching, evaluation metrics, the ready-made Trainer, data-parallel ranks.
#pragma once

#include "engine/dist/communicator.h"      // Communicator, broadcast_tensors, broadcast_string
#include "engine/dist/mpi_communicator.h"  // MpiCommunicator (ranks started by mpirun)
#include "engine/optim/adamw.h"            // AdamW, AdamWOptions, clip_grad_norm
#include "peft/data.h"      // Dataset, Example, TaskIndex, tokenize_examples, collate
#include "peft/evaluate.h"  // evaluate(), EvalOptions, Metric
#include "peft/schedule.h"  // Schedule, schedule_factor()
#include "peft/trainer.h"   // Trainer, TrainConfig, TrainResult
