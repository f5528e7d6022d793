// MpiCommunicator: the Communicator over MPI (MPICH or Open MPI) for ranks started by mpirun.
// Every collective polls a non-blocking MPI call against a deadline: a stalled rank is an error.
#pragma once

#include <memory>

#include "engine/dist/communicator.h"

namespace sp {

class MpiCommunicator final : public Communicator {
 public:
  /// True when an MPI launcher (mpirun, mpiexec, srun) started this process: its environment
  /// names a rank. A plain run then stays a single process without initialising MPI.
  static bool launched_by_mpi();

  /// Initialises MPI (thread level "funneled": only the calling thread uses MPI) on
  /// MPI_COMM_WORLD. `timeout_seconds` bounds how long one collective waits for the other ranks.
  explicit MpiCommunicator(double timeout_seconds = 300.0);
  ~MpiCommunicator() override;  ///< MPI_Finalize
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string description() const override;
  void set_timeout(double seconds) { timeout_seconds_ = seconds; }
  double timeout() const { return timeout_seconds_; }

  void all_reduce_sum(std::span<float> values) override;
  void all_reduce_sum(std::span<double> values) override;
  using Communicator::all_reduce_sum;
  void broadcast(std::span<std::byte> bytes, int root) override;
  void barrier() override;
  [[noreturn]] void abort(int exit_code) override;

 private:
  struct Pending;  // an MPI_Request, kept out of this header (mpi.h stays private)
  void wait(Pending& pending, const char* what);

  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  double timeout_seconds_;
  std::string library_;
};

}  // namespace sp
