// The softprompt subcommands: each registers its options on the app and returns the function
// that runs it (returning the process exit code).
#pragma once

#include <functional>

namespace CLI {
class App;
}

namespace sp::cli {

using CommandRunner = std::function<int()>;

CommandRunner add_train_command(CLI::App& app);
CommandRunner add_eval_command(CLI::App& app);
CommandRunner add_generate_command(CLI::App& app);
CommandRunner add_forward_command(CLI::App& app);
CommandRunner add_inspect_command(CLI::App& app);
CommandRunner add_bench_command(CLI::App& app);
CommandRunner add_demo_command(CLI::App& app);
CommandRunner add_serve_command(CLI::App& app);

}  // namespace sp::cli
