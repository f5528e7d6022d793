// Communicator: the collectives data-parallel training needs (sum all-reduce, broadcast,
// barrier, abort) over a group of ranks, and the single-process group every run starts in.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace sp {

/// A group of processes ("ranks") training one model together. Every rank must call the same
/// collectives in the same order; each call returns only when all ranks took part. Failures (a
/// rank that stopped answering, an MPI error) end every rank with a message instead of a hang.
class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// This process's index among the ranks on its machine, and their count (one GPU per local rank).
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;
  /// What carries the collectives, for logs ("single process", "MPI (MPICH 4.0.2)").
  virtual std::string description() const = 0;

  /// Element-wise sum over ranks, in place; every rank receives the same bits.
  virtual void all_reduce_sum(std::span<float> values) = 0;
  virtual void all_reduce_sum(std::span<double> values) = 0;
  /// Copies `bytes` of rank `root` into every other rank's `bytes` (same size everywhere).
  virtual void broadcast(std::span<std::byte> bytes, int root) = 0;
  virtual void barrier() = 0;
  /// Ends every rank's process with `exit_code`: one rank's error must not leave others waiting.
  [[noreturn]] virtual void abort(int exit_code) = 0;

  /// Sums F32 tensors (any device) over ranks, in place, with one collective for all of them.
  /// The default stages them through host memory; a device communicator (NCCL) reduces in place.
  virtual void all_reduce_sum(std::vector<Tensor>& tensors);

  bool is_root() const { return rank() == 0; }
};

/// The group of one: collectives are no-ops. What a plain `softprompt train` runs in.
class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  std::string description() const override { return "single process"; }
  void all_reduce_sum(std::span<float>) override {}
  void all_reduce_sum(std::span<double>) override {}
  void all_reduce_sum(std::vector<Tensor>&) override {}
  void broadcast(std::span<std::byte>, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int exit_code) override;
};

/// Broadcasts a string (any length) from `root`; returns root's string on every rank.
std::string broadcast_string(Communicator& comm, const std::string& value, int root);
/// Broadcasts the values of F32 tensors (any device) from `root` into every rank's tensors.
void broadcast_tensors(Communicator& comm, const std::vector<Tensor>& tensors, int root);

}  // namespace sp
