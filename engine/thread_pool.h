// The CPU thread pool and parallel_for: static, deterministic partitioning of index ranges.
// Sized to the machine; SOFTPROMPT_NUM_THREADS overrides. Nested calls run inline.
#pragma once

#include <cstdint>
#include <functional>

namespace sp {

int num_threads();
// Resizes the pool (>= 1). Also sets the BLAS library to single-threaded calls: softprompt
// parallelises GEMMs itself so only one set of threads ever competes for the cores.
void set_num_threads(int threads);

// Runs fn(chunk_begin, chunk_end) over [begin, end) split into at most num_threads() contiguous
// chunks of at least `grain` indices. Chunk boundaries depend only on the range, grain and thread
// count, never on timing, so per-chunk partial results are reproducible.
void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn);

// The number of chunks parallel_for would use for this range and grain.
int64_t parallel_chunks(int64_t begin, int64_t end, int64_t grain);

// Runs fn(chunk_index, chunk_begin, chunk_end) over the same partition as parallel_for.
void parallel_for_chunks(int64_t begin, int64_t end, int64_t grain,
                         const std::function<void(int64_t, int64_t, int64_t)>& fn);

}  // namespace sp
