// graph-exec.h — phase 1 of every graph: a no-alloc ggml context sized for a graph, plus a small executor
// used by tests and benchmarks (mul_mat of a GGUF weight with host activations).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend.h"
#include "ggml.h"
#include "gguf-model.h"

namespace actquant {

// Owns a no-alloc ggml context holding graph nodes and the graph itself.
class GraphContext {
public:
    explicit GraphContext(size_t max_nodes);
    ~GraphContext();
    GraphContext(const GraphContext &) = delete;
    GraphContext & operator=(const GraphContext &) = delete;

    ggml_context * ctx() const { return ctx_; }
    ggml_cgraph * graph() const { return graph_; }
    size_t max_nodes() const { return max_nodes_; }

    // Named input tensor (f32), marked as input.
    ggml_tensor * input(const std::string & name, std::vector<int64_t> ne, ggml_type type = GGML_TYPE_F32);
    // Marks t as output, names it and adds it to the graph.
    ggml_tensor * output(ggml_tensor * t, const std::string & name);

private:
    size_t max_nodes_;
    ggml_context * ctx_ = nullptr;
    ggml_cgraph * graph_ = nullptr;
};

// Copies host data into / out of a backend tensor with a size check.
void tensor_set_f32(ggml_tensor * t, const float * data, size_t n);
void tensor_get_f32(const ggml_tensor * t, float * data, size_t n);

// y[batch, rows] = x[batch, cols] @ W.T with W = model tensor `name` ([rows, cols], any supported type).
std::vector<float> mul_mat(const GgufModel & model, Backend & backend, const std::string & name, const float * x,
                           int64_t batch, int64_t cols);

}  // namespace actquant
