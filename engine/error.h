// sp::Error and SP_CHECK for the engine and the layers above: the definitions live in
// kernels/error.h, the lowest layer, so that the CUDA emulator can report through them too.
#pragma once

#include "kernels/error.h"
