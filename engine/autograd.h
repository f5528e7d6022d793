// The reverse-mode autograd tape: Node (one recorded op), record(), backward(), and NoGradGuard.
// Only ops with an input that requires grad are recorded; frozen weights never get a gradient.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace sp {

/// Which inputs of a node need a gradient; backward functions skip the others (no dW for frozen W).
/// For an input that already has a pending gradient from another consumer (a residual stream
/// read by a branch and by the skip connection), the engine may also offer that gradient as an
/// accumulation target: a backward that can add its gradient into it in the same pass (the
/// layernorm backward) does so and returns the target itself; any other returned tensor is added
/// by the engine, one more pass over memory.
class NeedsGrad {
 public:
  explicit NeedsGrad(size_t inputs) : needed_(inputs, false), targets_(inputs) {}
  bool operator[](size_t i) const { return needed_[i]; }
  size_t size() const { return needed_.size(); }
  /// A contiguous gradient no one else holds, or undefined.
  const Tensor& accumulate_target(size_t i) const { return targets_[i]; }

  void set_needed(size_t i, bool needed) { needed_[i] = needed; }
  void set_accumulate_target(size_t i, Tensor target) { targets_[i] = std::move(target); }

 private:
  std::vector<bool> needed_;
  std::vector<Tensor> targets_;
};
/// Given the gradient of the node's output, returns one gradient per input (undefined when not
/// needed). Saved tensors live in the closure and are freed when the graph is released.
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output, const NeedsGrad&)>;

/// One op recorded on the tape: its inputs' producers and the function computing their gradients.
struct Node {
  std::string op;         ///< the op's name, for error messages
  uint64_t sequence = 0;  ///< creation order: the tape order
  struct Input {
    std::shared_ptr<Node> node;        ///< producer of a non-leaf input
    std::shared_ptr<TensorImpl> leaf;  ///< a trainable leaf input
    Shape shape;
  };
  std::vector<Input> inputs;  ///< one per op input; both pointers null if it needs no gradient
  BackwardFn backward;
  bool released = false;
  /// The backward takes its [] gradient on the host too, reading it for free (a loss's backward
  /// folds it into a kernel's scale): backward() then seeds it there rather than filling a
  /// device scalar and multiplying by it.
  bool takes_host_upstream = false;
};

/// Whether ops currently record (false inside a NoGradGuard). Thread-local.
bool grad_mode_enabled();

/// Sets grad mode for its scope and restores the previous mode afterwards.
class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled);
  ~GradModeGuard();
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool previous_;
};

/// Inference scope: ops record nothing.
class NoGradGuard : public GradModeGuard {
 public:
  NoGradGuard() : GradModeGuard(false) {}
};

/// True if grad mode is on and any defined input requires grad.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);

/// Attaches a node computing `fn` to `output` if any input requires grad (and grad mode is on).
/// Inputs may include undefined tensors (optional arguments): they never need a gradient.
void record(Tensor& output, const char* op, const std::vector<Tensor>& inputs, BackwardFn fn);

/// Marks the node that produced `output` (if one was recorded) as taking a host gradient.
void accept_host_upstream(const Tensor& output);

/// Runs reverse mode from `root` with gradient `seed` (ones for a scalar root when undefined).
/// The seed may be on the host for any root; it stays there for a node that takes a host
/// gradient and is uploaded for the others. Gradients of trainable leaves accumulate into their
/// .grad(); the graph's saved tensors are released afterwards unless retain_graph.
void run_backward(const Tensor& root, const Tensor& seed, bool retain_graph);

/// Number of nodes recorded since process start (tests use it to check what is recorded).
uint64_t nodes_recorded();

}  // namespace sp
