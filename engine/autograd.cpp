// The tape: recording nodes for ops on trainable inputs and running them in reverse.
#include "engine/autograd.h"

#include <atomic>
#include <queue>
#include <unordered_map>

#include "engine/backend.h"
#include "engine/error.h"

namespace sp {

namespace {

thread_local bool g_grad_enabled = true;
std::atomic<uint64_t> g_sequence{0};

// dst += src, both contiguous of equal shape on the same device.
void accumulate_into(const Tensor& dst, const Tensor& src) {
  backend_for(dst.device()).binary(BinaryOp::kAdd, dst, src, dst);
}

// Whether only this handle reaches t's memory: no other handle to its TensorImpl (an add hands
// one tensor to both of its inputs) and no other TensorImpl on its storage (views, detach()).
// Only such a gradient may be accumulated into in place.
bool exclusively_held(const Tensor& t) {
  return t.impl_ptr().use_count() == 1 && t.impl()->storage.use_count() == 1;
}

Tensor ensure_contiguous_copy(const Tensor& t) {
  // A gradient handed to us may be a view of someone else's buffer; own it before mutating.
  Tensor out = Tensor::empty(t.shape(), t.dtype(), t.device());
  backend_for(t.device()).copy(t, out);
  return out;
}

}  // namespace

bool grad_mode_enabled() {
  return g_grad_enabled;
}

GradModeGuard::GradModeGuard(bool enabled) : previous_(g_grad_enabled) {
  g_grad_enabled = enabled;
}
GradModeGuard::~GradModeGuard() {
  g_grad_enabled = previous_;
}

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

uint64_t nodes_recorded() {
  return g_sequence.load();
}

void record(Tensor& output, const char* op, const std::vector<Tensor>& inputs, BackwardFn fn) {
  if (!any_requires_grad(inputs)) return;
  auto node = std::make_shared<Node>();
  node->op = op;
  node->sequence = g_sequence.fetch_add(1) + 1;
  node->inputs.resize(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& input = inputs[i];
    if (!input.defined() || !input.requires_grad()) continue;
    node->inputs[i].shape = input.shape();
    if (input.grad_fn())
      node->inputs[i].node = input.grad_fn();
    else
      node->inputs[i].leaf = input.impl_ptr();
  }
  node->backward = std::move(fn);
  output.impl()->grad_fn = std::move(node);
  output.impl()->requires_grad = true;
}

void accept_host_upstream(const Tensor& output) {
  if (output.grad_fn()) output.grad_fn()->takes_host_upstream = true;
}

void run_backward(const Tensor& root, const Tensor& seed_in, bool retain_graph) {
  SP_CHECK(root.defined(), "backward() on an undefined tensor");
  SP_CHECK(root.requires_grad(), "backward(): ", root.describe(),
           " does not require grad (no trainable tensor contributed to it)");
  // A host seed for a node that reads it on the host costs the device nothing: no fill, no
  // multiply by one.
  const bool host_seed_ok = root.grad_fn() && root.grad_fn()->takes_host_upstream;
  Tensor seed = seed_in;
  if (!seed.defined()) {
    SP_CHECK(root.numel() == 1, "backward(): ", root.describe(),
             " is not a scalar; pass the gradient of the output explicitly");
    seed = Tensor::full(root.shape(), 1.0f, root.dtype(),
                        host_seed_ok ? Device::cpu() : root.device());
  }
  SP_CHECK(seed.shape() == root.shape(), "backward(): seed gradient shape ",
           shape_str(seed.shape()), " does not match ", root.describe());
  SP_CHECK(seed.device() == root.device() || seed.device().is_cpu(), "backward(): seed gradient ",
           seed.describe(), " is on neither the host nor ", root.device().str(), " where ",
           root.describe(), " is");
  if (seed.device() != root.device() && !host_seed_ok) seed = seed.to(root.device());
  NoGradGuard no_higher_order;  // backward functions use ops; they must not record

  if (!root.grad_fn()) {  // backward on a trainable leaf itself
    TensorImpl* leaf = root.impl();
    if (leaf->grad)
      accumulate_into(Tensor(leaf->grad), seed);
    else
      leaf->grad = ensure_contiguous_copy(seed).impl_ptr();
    return;
  }

  // Count, for every reachable node, how many recorded consumers will send it a gradient.
  std::unordered_map<Node*, int> pending_consumers;
  std::vector<Node*> stack{root.grad_fn().get()};
  pending_consumers[root.grad_fn().get()] = 0;
  while (!stack.empty()) {
    Node* node = stack.back();
    stack.pop_back();
    for (const Node::Input& input : node->inputs) {
      if (!input.node) continue;
      auto [it, inserted] = pending_consumers.try_emplace(input.node.get(), 0);
      it->second += 1;
      if (inserted) stack.push_back(input.node.get());
    }
  }

  // Process in reverse tape order (largest sequence first) once all consumers have reported.
  auto later_first = [](Node* a, Node* b) { return a->sequence < b->sequence; };
  std::priority_queue<Node*, std::vector<Node*>, decltype(later_first)> ready(later_first);
  std::unordered_map<Node*, Tensor> grads;
  grads[root.grad_fn().get()] = seed;
  ready.push(root.grad_fn().get());
  std::vector<std::shared_ptr<Node>> keep_alive{root.grad_fn()};

  while (!ready.empty()) {
    Node* node = ready.top();
    ready.pop();
    SP_CHECK(!node->released, "backward(): the graph through op '", node->op,
             "' was already freed by an earlier backward; pass retain_graph=true to the first "
             "backward to run it twice");
    Tensor grad_output = std::move(grads[node]);
    grads.erase(node);

    NeedsGrad needs(node->inputs.size());
    for (size_t i = 0; i < node->inputs.size(); ++i) {
      const Node::Input& input = node->inputs[i];
      needs.set_needed(i, input.node != nullptr || input.leaf != nullptr);
      if (!input.node) continue;
      // A pending gradient is offered only if nothing else reaches its memory (not this node's
      // grad_output, not another pending entry), and to one input per producer.
      auto pending = grads.find(input.node.get());
      if (pending != grads.end() && pending->second.defined() && pending->second.is_contiguous() &&
          exclusively_held(pending->second))
        needs.set_accumulate_target(i, pending->second);
    }
    std::vector<Tensor> input_grads = node->backward(grad_output, needs);
    SP_ASSERT(input_grads.size() == node->inputs.size());
    for (size_t i = 0; i < node->inputs.size(); ++i)
      if (input_grads[i].defined() && needs.accumulate_target(i).defined() &&
          input_grads[i].impl() == needs.accumulate_target(i).impl())
        input_grads[i] = Tensor();  // already added into the pending gradient

    for (size_t i = 0; i < node->inputs.size(); ++i) {
      if (!needs[i]) continue;
      const Node::Input& input = node->inputs[i];
      Tensor& g = input_grads[i];
      if (!g.defined() && needs.accumulate_target(i).defined()) {
        if (--pending_consumers[input.node.get()] == 0) {
          keep_alive.push_back(input.node);
          ready.push(input.node.get());
        }
        continue;
      }
      SP_CHECK(g.defined(), "internal error: op '", node->op, "' produced no gradient for input ",
               i);
      SP_CHECK(g.shape() == input.shape, "internal error: op '", node->op,
               "' produced a gradient of shape ", shape_str(g.shape()), " for input ", i,
               " of shape ", shape_str(input.shape));
      if (input.leaf) {
        TensorImpl* leaf = input.leaf.get();
        if (leaf->grad) {
          accumulate_into(Tensor(leaf->grad), g);
        } else {
          // Own the buffer: another pending gradient may alias g and later accumulations are
          // in place.
          bool exclusive = g.is_contiguous() && exclusively_held(g);
          leaf->grad = (exclusive ? g.detach() : ensure_contiguous_copy(g)).impl_ptr();
        }
        continue;
      }
      Node* producer = input.node.get();
      auto it = grads.find(producer);
      if (it == grads.end() || !it->second.defined()) {
        grads[producer] = g;
      } else {
        Tensor& existing = it->second;
        if (!existing.is_contiguous() || !exclusively_held(existing))
          existing = ensure_contiguous_copy(existing);
        accumulate_into(existing, g);
      }
      if (--pending_consumers[producer] == 0) {
        keep_alive.push_back(input.node);
        ready.push(producer);
      }
    }
    if (!retain_graph) {
      node->backward = nullptr;  // frees the saved activations
      node->released = true;
    }
  }
}

}  // namespace sp
