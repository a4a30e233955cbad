#include "graph-exec.h"

#include <sstream>

#include "errors.h"

namespace actquant {

GraphContext::GraphContext(size_t max_nodes) : max_nodes_(max_nodes) {
    ggml_init_params p{};
    p.mem_size = ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false);
    p.mem_buffer = nullptr;
    p.no_alloc = true;
    ctx_ = ggml_init(p);
    if (ctx_ == nullptr) throw Error("ggml_init failed for a graph of " + std::to_string(max_nodes) + " nodes");
    graph_ = ggml_new_graph_custom(ctx_, max_nodes, false);
}

GraphContext::~GraphContext() {
    if (ctx_) ggml_free(ctx_);
}

ggml_tensor * GraphContext::input(const std::string & name, std::vector<int64_t> ne, ggml_type type) {
    ggml_tensor * t = nullptr;
    switch (ne.size()) {
        case 1: t = ggml_new_tensor_1d(ctx_, type, ne[0]); break;
        case 2: t = ggml_new_tensor_2d(ctx_, type, ne[0], ne[1]); break;
        case 3: t = ggml_new_tensor_3d(ctx_, type, ne[0], ne[1], ne[2]); break;
        case 4: t = ggml_new_tensor_4d(ctx_, type, ne[0], ne[1], ne[2], ne[3]); break;
        default: throw Error("input '" + name + "': 1 to 4 dims supported");
    }
    ggml_set_name(t, name.c_str());
    ggml_set_input(t);
    return t;
}

ggml_tensor * GraphContext::output(ggml_tensor * t, const std::string & name) {
    ggml_set_name(t, name.c_str());
    ggml_set_output(t);
    ggml_build_forward_expand(graph_, t);
    return t;
}

void tensor_set_f32(ggml_tensor * t, const float * data, size_t n) {
    if (t->type != GGML_TYPE_F32 || (size_t) ggml_nelements(t) != n) {
        std::ostringstream m;
        m << "input '" << t->name << "': expected " << ggml_nelements(t) << " f32 values, got " << n;
        throw Error(m.str());
    }
    ggml_backend_tensor_set(t, data, 0, n * sizeof(float));
}

void tensor_get_f32(const ggml_tensor * t, float * data, size_t n) {
    if (t->type != GGML_TYPE_F32 || (size_t) ggml_nelements(t) != n) {
        std::ostringstream m;
        m << "output '" << t->name << "': holds " << ggml_nelements(t) << " values, asked for " << n;
        throw Error(m.str());
    }
    ggml_backend_tensor_get(t, data, 0, n * sizeof(float));
}

std::vector<float> mul_mat(const GgufModel & model, Backend & backend, const std::string & name, const float * x,
                           int64_t batch, int64_t cols) {
    ggml_tensor * W = model.get(name);
    if (ggml_n_dims(W) > 2 || W->ne[0] != cols) {
        std::ostringstream m;
        m << "mul_mat: tensor '" << name << "' has row length " << W->ne[0] << ", activations have " << cols;
        throw Error(m.str());
    }
    GraphContext g(16);
    ggml_tensor * xt = g.input("x", {cols, batch});
    ggml_tensor * y = g.output(ggml_mul_mat(g.ctx(), W, xt), "y");
    backend.alloc(g.graph(), g.max_nodes());
    tensor_set_f32(xt, x, (size_t) (cols * batch));
    backend.run(g.graph());
    std::vector<float> out((size_t) (W->ne[1] * batch));
    tensor_get_f32(y, out.data(), out.size());
    return out;
}

}  // namespace actquant
