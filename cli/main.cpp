// The softprompt command: parses the subcommand and maps failures to documented exit codes.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/validate.h"
#include "engine/dist/mpi_communicator.h"
#include "engine/error.h"
#include "engine/log.h"

namespace {

// Runs the parsed command; prints any failure as one line and maps it to an exit code.
int run_parsed_command(const std::map<CLI::App*, sp::cli::CommandRunner>& runners) {
  using namespace sp::cli;
  const std::string who = sp::log_prefix();
  try {
    for (auto& [command, run] : runners) {
      if (!command->parsed()) continue;
      if (ranks().size() > 1 && command->get_name() != "train" && command->get_name() != "bench")
        throw UsageError(
            "only 'softprompt train' and 'softprompt bench' run on several ranks (this is rank " +
            std::to_string(ranks().rank()) + " of " + std::to_string(ranks().size()) + "); run '" +
            command->get_name() + "' as one process, without mpirun");
      return run();
    }
  } catch (const UsageError& e) {
    // A value that only the loaded model shows to be wrong (say, longer than its context).
    std::fprintf(stderr, "%s: error: %s\nRun with --help for more information.\n", who.c_str(),
                 e.what());
    return kExitUsage;
  } catch (const sp::Error& e) {
    std::fprintf(stderr, "%s: error: %s\n", who.c_str(), e.what());
    switch (e.kind()) {
      case sp::ErrorKind::kNumerical:
        return kExitNumerical;
      case sp::ErrorKind::kUnsupported:
        return kExitUnsupported;
      case sp::ErrorKind::kInternal:
        return kExitInternal;
      default:
        return kExitError;
    }
  } catch (const std::filesystem::filesystem_error& e) {
    // The file system refused something the user asked for (an output path under a regular
    // file, a symlink loop): bad input, not a softprompt bug.
    std::string message = e.what();
    if (message.starts_with("filesystem error: ")) message.erase(0, 18);
    std::fprintf(stderr, "%s: error: %s\n", who.c_str(), message.c_str());
    return kExitError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: internal error: %s\n", who.c_str(), e.what());
    return kExitInternal;
  }
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sp::cli;
  CLI::App app{
      "softprompt: prompt tuning of frozen language models, compatible with Hugging Face PEFT"};
  app.require_subcommand(1);
  app.footer(kExitCodeHelp);
  app.set_version_flag("--version", "softprompt " SOFTPROMPT_VERSION_STRING);
  std::map<CLI::App*, CommandRunner> runners;
  for (auto add : {add_train_command, add_eval_command, add_generate_command, add_forward_command,
                   add_inspect_command, add_bench_command, add_demo_command, add_serve_command}) {
    size_t before = app.get_subcommands({}).size();
    CommandRunner run = add(app);
    runners[app.get_subcommands({})[before]] = run;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }
  // Under mpirun every rank runs this program: MPI joins them into one data-parallel group.
  std::unique_ptr<sp::MpiCommunicator> mpi;
  if (sp::MpiCommunicator::launched_by_mpi()) {
    try {
      mpi = std::make_unique<sp::MpiCommunicator>();
    } catch (const sp::Error& e) {
      std::fprintf(stderr, "softprompt: error: %s\n", e.what());
      return kExitUnsupported;
    }
    if (mpi->size() > 1) {
      sp::set_log_rank(mpi->rank());
      set_ranks(mpi.get());
    }
  }
  const int code = run_parsed_command(runners);
  // One rank's failure ends all of them (the others may be waiting in a collective for it).
  if (mpi && mpi->size() > 1 && code != kExitOk && code != kExitInterrupted) mpi->abort(code);
  set_ranks(nullptr);
  return code;
}
