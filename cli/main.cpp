// The softprompt command: parses the subcommand and maps failures to documented exit codes.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <map>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/validate.h"
#include "engine/error.h"

int main(int argc, char** argv) {
  using namespace sp::cli;
  CLI::App app{
      "softprompt: prompt tuning of frozen language models, compatible with Hugging Face PEFT"};
  app.require_subcommand(1);
  app.footer(kExitCodeHelp);
  app.set_version_flag("--version", "softprompt " SOFTPROMPT_VERSION_STRING);
  std::map<CLI::App*, CommandRunner> runners;
  for (auto add : {add_train_command, add_eval_command, add_generate_command, add_forward_command,
                   add_inspect_command, add_bench_command, add_demo_command}) {
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
  try {
    for (auto& [command, run] : runners)
      if (command->parsed()) return run();
  } catch (const UsageError& e) {
    // A value that only the loaded model shows to be wrong (say, longer than its context).
    std::fprintf(stderr, "softprompt: error: %s\nRun with --help for more information.\n",
                 e.what());
    return kExitUsage;
  } catch (const sp::Error& e) {
    std::fprintf(stderr, "softprompt: error: %s\n", e.what());
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
    std::fprintf(stderr, "softprompt: error: %s\n", message.c_str());
    return kExitError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "softprompt: internal error: %s\n", e.what());
    return kExitInternal;
  }
  return kExitUsage;
}
