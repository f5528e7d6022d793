// Every differentiable op of the engine, one header per op family under engine/ops/.
// Include this to get them all.
#pragma once

#include "engine/ops/activation.h"
#include "engine/ops/attention.h"
#include "engine/ops/concat.h"
#include "engine/ops/cross_entropy.h"
#include "engine/ops/dropout.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/embedding.h"
#include "engine/ops/feed_forward.h"
#include "engine/ops/layernorm.h"
#include "engine/ops/matmul.h"
#include "engine/ops/random.h"
#include "engine/ops/reduce.h"
#include "engine/ops/relative_position_bias.h"
#include "engine/ops/rotary.h"
#include "engine/tensor.h"
