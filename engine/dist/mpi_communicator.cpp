// MPI collectives with deadlines: MPI_I* calls polled with MPI_Test, errors returned (not fatal).
#include "engine/dist/mpi_communicator.h"

#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "engine/error.h"

namespace sp {

struct MpiCommunicator::Pending {
  MPI_Request request = MPI_REQUEST_NULL;
};

namespace {

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS)
    return "MPI error " + std::to_string(code);
  return std::string(text, size_t(length));
}

void check_mpi(int code, const char* call) {
  if (code != MPI_SUCCESS) fail(ErrorKind::kIo, "MPI: ", call, " failed: ", mpi_error_text(code));
}

int checked_count(size_t n, const char* what) {
  SP_CHECK(n <= size_t(INT_MAX), what, ": ", n, " elements exceed MPI's int count");
  return int(n);
}

}  // namespace

MpiCommunicator::MpiCommunicator(double timeout_seconds) : timeout_seconds_(timeout_seconds) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  SP_CHECK(!initialized, "MpiCommunicator: MPI is already initialised in this process");
  int provided = 0;
  check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  // Errors come back as codes (turned into sp::Error) rather than aborting inside MPI.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
  MPI_Comm local;
  check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local),
            "MPI_Comm_split_type");
  MPI_Comm_rank(local, &local_rank_);
  MPI_Comm_size(local, &local_size_);
  MPI_Comm_free(&local);
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(version, &length);
  library_.assign(version, size_t(length));
  library_ = library_.substr(0, library_.find_first_of("\n\r"));
  for (char& c : library_)
    if (c == '\t') c = ' ';
  while (library_.find("  ") != std::string::npos) library_.erase(library_.find("  "), 1);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::string MpiCommunicator::description() const {
  return "MPI, " + std::to_string(size_) + " ranks (" + library_ + ")";
}

void MpiCommunicator::wait(Pending& pending, const char* what) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::duration<double>(timeout_seconds_);
  // Spin briefly (collectives of a step usually complete within microseconds of the last rank
  // arriving), then back off to short sleeps so a waiting rank leaves its core to the others.
  for (int polls = 0;; ++polls) {
    int done = 0;
    check_mpi(MPI_Test(&pending.request, &done, MPI_STATUS_IGNORE), what);
    if (done) return;
    if (clock::now() > deadline)
      fail(ErrorKind::kIo, "rank ", rank_, ": ", what, " waited more than ", timeout_seconds_,
           " s for the other ranks (one of them failed, was killed or hangs); set "
           "--collective-timeout to wait longer");
    if (polls > 2000)
      std::this_thread::sleep_for(std::chrono::microseconds(polls > 20000 ? 1000 : 50));
  }
}

void MpiCommunicator::all_reduce_sum(std::span<float> values) {
  Pending p;
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, values.data(), checked_count(values.size(), "all-reduce"),
                           MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &p.request),
            "MPI_Iallreduce");
  wait(p, "all-reduce");
}

void MpiCommunicator::all_reduce_sum(std::span<double> values) {
  Pending p;
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, values.data(), checked_count(values.size(), "all-reduce"),
                           MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &p.request),
            "MPI_Iallreduce");
  wait(p, "all-reduce");
}

void MpiCommunicator::broadcast(std::span<std::byte> bytes, int root) {
  SP_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " is not a rank of ", size_);
  Pending p;
  check_mpi(MPI_Ibcast(bytes.data(), checked_count(bytes.size(), "broadcast"), MPI_BYTE, root,
                       MPI_COMM_WORLD, &p.request),
            "MPI_Ibcast");
  wait(p, "broadcast");
}

void MpiCommunicator::barrier() {
  Pending p;
  check_mpi(MPI_Ibarrier(MPI_COMM_WORLD, &p.request), "MPI_Ibarrier");
  wait(p, "barrier");
}

void MpiCommunicator::abort(int exit_code) {
  std::fflush(nullptr);
  // The launcher forwards each rank's output through a pipe and stops forwarding once it starts
  // killing ranks: give it a moment to pass on the error this rank just printed.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

}  // namespace sp
