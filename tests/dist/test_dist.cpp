// Data parallel, run as 2 MPI ranks: the collectives, and a 2-rank Trainer against the
// single-process run with the same global batch (bitwise), resumed on one rank, stopped by one.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "engine/backend.h"
#include "engine/dist/mpi_communicator.h"
#include "engine/error.h"
#include "engine/safetensors.h"
#include "engine/thread_pool.h"
#include "peft/data.h"
#include "peft/trainer.h"
#include "tests/peft/peft_test_util.h"

namespace sp {
namespace {

namespace fs = std::filesystem;

MpiCommunicator* g_comm = nullptr;
MpiCommunicator& comm() {
  return *g_comm;
}

// Every rank works in the same directory (rank 0's name); rank 0 alone creates and removes it.
class DataParallel : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(comm().size(), 2) << "run under mpiexec -n 2";
    const std::string mine = (fs::temp_directory_path() /
                              ("sp_dist_" + std::to_string(::getpid()) + "_" +
                               ::testing::UnitTest::GetInstance()->current_test_info()->name()))
                                 .string();
    dir_ = broadcast_string(comm(), mine, 0);
    if (comm().is_root()) {
      fs::remove_all(dir_);
      fs::create_directories(dir_);
      // The tiny GPT-2 with dropout on (the fixture has 0.1 nowhere), so every micro-batch's
      // dropout mask matters to the comparisons below.
      fs::copy(testing::kTinyA, dir_ / "model", fs::copy_options::recursive);
      nlohmann::json config;
      std::ifstream(dir_ / "model/config.json") >> config;
      for (const char* key : {"attn_pdrop", "embd_pdrop", "resid_pdrop"}) config[key] = 0.1;
      std::ofstream(dir_ / "model/config.json") << config.dump(2);
    }
    comm().barrier();
    tokenizer_ = load_tokenizer((dir_ / "model").string());
  }
  void TearDown() override {
    comm().barrier();
    if (comm().is_root()) fs::remove_all(dir_);
  }

  // 18 rows: with batch 4, an epoch has 5 micro-batches, so with 2 per step its last step has
  // one, and rank 1 contributes a zero gradient there.
  Dataset task_data() {
    const char* pairs[][2] = {{"hot", "cold"},  {"up", "down"},   {"big", "small"},
                              {"day", "night"}, {"open", "shut"}, {"left", "right"},
                              {"fast", "slow"}, {"old", "new"},   {"wet", "dry"}};
    std::string text;
    for (int repeat = 0; repeat < 2; ++repeat)
      for (auto& p : pairs)
        text += std::string("{\"input\": \"The opposite of ") + p[0] + " is\", \"output\": \" " +
                p[1] + "\"}\n";
    const std::string path =
        (dir_ / ("train." + std::to_string(comm().rank()) + ".jsonl")).string();
    std::ofstream(path) << text;
    return load_jsonl(path);
  }

  TrainConfig config(const std::string& out, Communicator* communicator, int64_t grad_accum) {
    TrainConfig c;
    c.output_dir = (dir_ / out).string();
    c.batch_size = 4;
    c.grad_accum = grad_accum;
    c.communicator = communicator;
    c.max_steps = 7;  // crosses two epoch ends
    c.optim.lr = 0.05f;
    c.schedule = Schedule::kCosine;
    c.warmup_steps = 2;
    c.metric = Metric::kTokenAccuracy;
    c.eval_every = 3;
    c.eval_batch_size = 3;  // 6 evaluation batches, 3 per rank
    c.seed = 7;
    return c;  // dropout stays on: the micro-batch index seeds it on every rank count
  }

  struct Run {
    TrainResult result;
    std::vector<float> prompt;
  };
  // `on_step` (optional) sees every step event with the model, on every rank.
  using StepHook = std::function<void(const TrainEvent&, PeftModel&)>;
  Run train(const TrainConfig& c, bool resume = false, int64_t stop_at = -1, int stop_rank = -1,
            const StepHook& on_step = {}) {
    Dataset data = task_data();
    auto examples = tokenize_examples(data, *tokenizer_, nullptr, {});
    auto model = std::make_unique<PeftModel>(Gpt2Model::load((dir_ / "model").string()),
                                             load_tokenizer((dir_ / "model").string()));
    PromptTuningConfig p;
    p.task_type = TaskType::kCausalLm;
    p.num_virtual_tokens = 4;
    model->add_adapter("default", p, 1);
    Trainer trainer(*model, *tokenizer_, c, data, examples, &data, examples);
    trainer.set_event_callback([&](const TrainEvent& e) {
      const int rank = c.communicator ? c.communicator->rank() : 0;
      if (e.kind == TrainEvent::Kind::kStep && e.step == stop_at && rank == stop_rank)
        Trainer::stop_requested().store(true);
      if (on_step && e.kind == TrainEvent::Kind::kStep) on_step(e, *model);
    });
    Run run;
    run.result = trainer.run(resume);
    run.prompt = model->adapter().named_parameters()[0].second.to_floats();
    return run;
  }

  // metrics.jsonl without the timing fields, which differ between any two runs.
  std::vector<nlohmann::json> metrics(const std::string& out) {
    std::vector<nlohmann::json> records;
    std::ifstream in(dir_ / out / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      nlohmann::json r = nlohmann::json::parse(line);
      r.erase("elapsed");
      r.erase("tokens_per_second");
      records.push_back(r);
    }
    return records;
  }

  fs::path dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(DataParallel, CollectivesSumAndCopyOnEveryRank) {
  const int r = comm().rank();
  std::vector<float> f = {1.5f + float(r), -2.0f * float(r)};
  comm().all_reduce_sum(std::span<float>(f));
  EXPECT_EQ(f, (std::vector<float>{4.0f, -2.0f}));
  std::vector<double> d = {0.25 * (r + 1)};
  comm().all_reduce_sum(std::span<double>(d));
  EXPECT_EQ(d[0], 0.75);
  EXPECT_EQ(broadcast_string(comm(), r == 1 ? "from rank 1" : "", 1), "from rank 1");
  // Tensors on the host and on the emulated GPU, summed through one staged collective.
  for (Device device : {Device::cpu(), Device::parse("cuda-emu")}) {
    std::vector<Tensor> t = {Tensor::full({2, 3}, float(r + 1), DType::F32, device),
                             Tensor::full({4}, float(10 * r), DType::F32, device)};
    comm().all_reduce_sum(t);
    EXPECT_EQ(t[0].to_floats(), std::vector<float>(6, 3.0f)) << device.str();
    EXPECT_EQ(t[1].to_floats(), std::vector<float>(4, 10.0f)) << device.str();
    std::vector<Tensor> b = {Tensor::full({3}, r == 0 ? 5.0f : -1.0f, DType::F32, device)};
    broadcast_tensors(comm(), b, 0);
    EXPECT_EQ(b[0].to_floats(), std::vector<float>(3, 5.0f)) << device.str();
  }
}

// A rank that does not arrive is an error on the waiting rank, not a hang.
TEST_F(DataParallel, ACollectiveThatWaitsPastItsTimeoutIsAnError) {
  const double timeout = comm().timeout();
  if (comm().is_root()) {
    comm().set_timeout(0.3);
    try {
      comm().barrier();
      ADD_FAILURE() << "the barrier returned before rank 1 arrived";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("rank 0: barrier waited more than 0.3 s for the other "
                                           "ranks"),
                std::string::npos)
          << e.what();
    }
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    comm().barrier();  // completes against rank 0's abandoned barrier
  }
  comm().set_timeout(timeout);
}

// The adapter, every logged loss and gradient norm and every evaluation of 2 ranks x batch 4
// equal, bit for bit, one process taking batch 4 x grad-accum 2 (one thread per rank and in
// the reference: the per-micro-batch arithmetic is identical, and a + b == b + a).
TEST_F(DataParallel, TwoRanksTrainLikeOneProcessWithTheSameGlobalBatch) {
  Run two = train(config("two", &comm(), 1));
  EXPECT_EQ(two.result.steps, 7);
  ASSERT_TRUE(two.result.last_eval.has_value());
  // Both ranks hold the same prompt and the same (sharded, then combined) evaluation.
  std::vector<float> root_prompt = two.prompt;
  std::vector<Tensor> shared = {Tensor::from_floats(root_prompt, {int64_t(root_prompt.size())})};
  broadcast_tensors(comm(), shared, 0);
  EXPECT_EQ(shared[0].to_floats(), two.prompt);
  const double root_loss =
      std::stod(broadcast_string(comm(), nlohmann::json(two.result.last_eval->loss).dump(), 0));
  EXPECT_EQ(root_loss, two.result.last_eval->loss);
  if (!comm().is_root()) return;  // rank 0 alone runs the reference
  Run one = train(config("one", nullptr, 2));
  EXPECT_EQ(two.prompt, one.prompt);
  EXPECT_EQ(two.result.last_eval->loss, one.result.last_eval->loss);
  EXPECT_EQ(two.result.last_eval->correct, one.result.last_eval->correct);
  EXPECT_EQ(two.result.best_step, one.result.best_step);
  const auto two_metrics = metrics("two"), one_metrics = metrics("one");
  ASSERT_EQ(two_metrics.size(), 7u + 3u);  // 7 steps, evaluations at steps 3, 6 and the end
  EXPECT_EQ(two_metrics, one_metrics);
  for (const char* file : {"adapter_model.safetensors", "best/adapter_model.safetensors"}) {
    auto a = SafetensorsFile::open((dir_ / "two" / file).string());
    auto b = SafetensorsFile::open((dir_ / "one" / file).string());
    EXPECT_EQ(a->get("prompt_embeddings").to_floats(), b->get("prompt_embeddings").to_floats())
        << file;
  }
}

// A loss that turns non-finite on one rank stops every rank after that step with a numerical
// error, within seconds: the ranks agree through the summed loss instead of the failing rank
// leaving the others waiting in a collective until its timeout.
TEST_F(DataParallel, ANonFiniteLossOnOneRankStopsEveryRank) {
  const auto started = std::chrono::steady_clock::now();
  try {
    train(config("nan", &comm(), 1), false, -1, -1, [&](const TrainEvent& e, PeftModel& model) {
      if (e.step != 2 || comm().rank() != 1) return;
      Tensor p = model.adapter().named_parameters()[0].second;
      p.data<float>()[0] = std::nanf("");  // this rank's prompt diverges
    });
    ADD_FAILURE() << "rank " << comm().rank() << " finished training";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNumerical) << e.what();
    // Step 3 is the epoch's fifth and last batch, which rank 0 alone takes: rank 1's first loss
    // after the poisoning is at step 4, and both ranks name it.
    EXPECT_NE(std::string(e.what()).find("loss is nan at step 4"), std::string::npos) << e.what();
    if (comm().rank() == 0) {
      EXPECT_NE(std::string(e.what()).find("(on another rank)"), std::string::npos) << e.what();
    }
  }
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(60));
  comm().barrier();
}

// A stop request on rank 1 alone stops both ranks after the same step; the 2-rank checkpoint
// then continues on one process (grad-accum 2) exactly like the uninterrupted run.
TEST_F(DataParallel, ACheckpointOfTwoRanksResumesOnOneRankExactly) {
  Run first = train(config("split", &comm(), 1), false, /*stop_at=*/2, /*stop_rank=*/1);
  Trainer::stop_requested().store(false);
  EXPECT_TRUE(first.result.interrupted);
  EXPECT_EQ(first.result.steps, 3) << "requested during step 2, agreed at the end of step 3";
  if (!comm().is_root()) return;
  nlohmann::json state;
  std::ifstream(dir_ / "split/training_state/trainer_state.json") >> state;
  EXPECT_EQ(state["global_step"], 3);
  EXPECT_EQ(state["world_size"], 2);

  // Another global batch would read other examples per step: refused, naming both products.
  try {
    train(config("split", nullptr, 1), /*resume=*/true);
    ADD_FAILURE() << "resuming with grad-accum 1 on one rank was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the checkpoint took 2 micro-batches per step "
                                         "(grad_accum 1 x 2 ranks) but this run takes 1"),
              std::string::npos)
        << e.what();
  }
  Run resumed = train(config("split", nullptr, 2), /*resume=*/true);
  EXPECT_FALSE(resumed.result.interrupted);
  EXPECT_EQ(resumed.result.steps, 7);
  Run full = train(config("full", nullptr, 2));
  EXPECT_EQ(resumed.prompt, full.prompt);
  EXPECT_EQ(metrics("split"), metrics("full"));
}

// The other way round: a single-process checkpoint (grad-accum 2) continues on 2 ranks.
TEST_F(DataParallel, ACheckpointOfOneProcessResumesOnTwoRanksExactly) {
  if (comm().is_root()) {
    Run first = train(config("grow", nullptr, 2), false, /*stop_at=*/4, /*stop_rank=*/0);
    Trainer::stop_requested().store(false);
    EXPECT_TRUE(first.result.interrupted);
    EXPECT_EQ(first.result.steps, 4);
  }
  comm().barrier();  // rank 1 waits here while rank 0 trains alone
  Run resumed = train(config("grow", &comm(), 1), /*resume=*/true);
  EXPECT_EQ(resumed.result.steps, 7);
  if (!comm().is_root()) return;
  Run full = train(config("full", nullptr, 2));
  EXPECT_EQ(resumed.prompt, full.prompt);
  EXPECT_EQ(metrics("grow"), metrics("full"));
}

}  // namespace
}  // namespace sp

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  sp::MpiCommunicator communicator(/*timeout_seconds=*/120);
  sp::g_comm = &communicator;
  sp::set_num_threads(1);
  // Rank 1's results matter as much as rank 0's: each rank prints its own report.
  return RUN_ALL_TESTS();
}
