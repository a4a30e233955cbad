#include "layers.h"

#include "errors.h"
#include "ggml-backend.h"
#include "gguf-model.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace actquant {

ggml_tensor * layer_linear(ggml_context * ctx, ggml_tensor * W, ggml_tensor * b, ggml_tensor * x) {
    ggml_tensor * y = ggml_mul_mat(ctx, W, x);
    return b ? ggml_add(ctx, y, b) : y;
}

ggml_tensor * layer_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b, float eps) {
    x = ggml_norm(ctx, x, eps);
    if (w) x = ggml_mul(ctx, x, w);
    if (b) x = ggml_add(ctx, x, b);
    return x;
}

ggml_tensor * layer_rms_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, float eps) {
    x = ggml_rms_norm(ctx, x, eps);
    return w ? ggml_mul(ctx, x, w) : x;
}

ggml_tensor * layer_gelu_tanh(ggml_context * ctx, ggml_tensor * x, bool native) {
    if (native) return ggml_gelu(ctx, x);
    // 0.5 x (1 + tanh(z)) = x sigmoid(2z), z = k x (1 + 0.044715 x^2). With a = 2k (1 + 0.044715 x^2) and y = x a:
    // x sigmoid(y) = silu(y) / a (a >= 2k > 0). GGML's CPU SILU is vectorised (its TANH and SIGMOID are scalar
    // tanhf / expf loops, a quarter of pi05-small's CPU time went to TANH): 5 nodes instead of 7.
    const float k2 = 2.0f * std::sqrt(2.0f / (float) M_PI);
    ggml_tensor * a = ggml_scale_bias(ctx, ggml_sqr(ctx, x), k2 * 0.044715f, k2);
    return ggml_div(ctx, ggml_silu(ctx, ggml_mul(ctx, x, a)), a);
}

ggml_tensor * layer_geglu_tanh(ggml_context * ctx, ggml_tensor * gate, ggml_tensor * up, bool native) {
    if (native) return ggml_geglu_split(ctx, gate, up);
    return ggml_mul(ctx, layer_gelu_tanh(ctx, gate, false), up);
}

layer_qkv_t layer_qkv(ggml_context * ctx, GgufModel & m, const std::string & prefix, ggml_tensor * x, int64_t hd,
                      int64_t n_q, int64_t n_kv) {
    const std::string q = prefix + "attn_q.weight", k = prefix + "attn_k.weight", v = prefix + "attn_v.weight";
    const int64_t L = x->ne[1];
    if (ggml_tensor * W = m.fused({q, k, v}, prefix + "attn_qkv.weight")) {
        ggml_tensor * qkv = ggml_mul_mat(ctx, W, x);  // [hd * (n_q + 2 n_kv), L]
        const size_t es = ggml_element_size(qkv), row = qkv->nb[1];
        return {ggml_view_3d(ctx, qkv, hd, n_q, L, hd * es, row, 0),
                ggml_view_3d(ctx, qkv, hd, n_kv, L, hd * es, row, (size_t) (n_q * hd) * es),
                ggml_view_3d(ctx, qkv, hd, n_kv, L, hd * es, row, (size_t) ((n_q + n_kv) * hd) * es)};
    }
    return {ggml_reshape_3d(ctx, ggml_mul_mat(ctx, m.get(q), x), hd, n_q, L),
            ggml_reshape_3d(ctx, ggml_mul_mat(ctx, m.get(k), x), hd, n_kv, L),
            ggml_reshape_3d(ctx, ggml_mul_mat(ctx, m.get(v), x), hd, n_kv, L)};
}

ggml_tensor * layer_ffn_geglu(ggml_context * ctx, GgufModel & m, const std::string & prefix, ggml_tensor * x,
                              bool native) {
    const std::string gate = prefix + "ffn_gate.weight", up = prefix + "ffn_up.weight";
    if (native) {
        // GEGLU of the stacked [gate x; up x]: its first half is gated (CPU would need two copies to split it)
        if (ggml_tensor * W = m.fused({gate, up}, prefix + "ffn_gate_up.weight")) return ggml_geglu(ctx, ggml_mul_mat(ctx, W, x));
    }
    return layer_geglu_tanh(ctx, ggml_mul_mat(ctx, m.get(gate), x), ggml_mul_mat(ctx, m.get(up), x), native);
}

ggml_backend_t layer_flash_backend(ggml_backend_t primary, bool gpu) {
    const char * e = std::getenv("ACTQUANT_FLASH_ATTN");
    const std::string mode = e == nullptr || *e == '\0' ? "gpu" : e;
    if (mode == "gpu") return gpu ? primary : nullptr;
    if (mode == "0") return nullptr;
    if (mode == "all") return primary;
    throw Error("ACTQUANT_FLASH_ATTN must be gpu, 0 or all, got '" + mode + "'");
}

ggml_tensor * layer_attention(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v,
                              ggml_tensor * mask, float scale, ggml_backend_t flash) {
    const int64_t hd = q->ne[0], N = q->ne[1], Lq = q->ne[2], B = q->ne[3];
    if (flash != nullptr && mask == nullptr) {
        // q [hd, Lq, N, B], k / v [hd, Lk, K, B] (v not transposed) -> [hd, N, Lq, B], contiguous
        ggml_tensor * fa = ggml_flash_attn_ext(ctx, ggml_permute(ctx, q, 0, 2, 1, 3), ggml_permute(ctx, k, 0, 2, 1, 3),
                                               ggml_permute(ctx, v, 0, 2, 1, 3), nullptr, scale, 0.0f, 0.0f);
        ggml_flash_attn_ext_set_prec(fa, GGML_PREC_F32);
        // an unsupported node would be scheduled on the CPU (a copy of K/V each way): keep the explicit form then
        if (ggml_backend_supports_op(flash, fa)) return ggml_reshape_3d(ctx, fa, hd * N, Lq, B);
    }
    ggml_tensor * qp = ggml_permute(ctx, q, 0, 2, 1, 3);  // [hd, Lq, N, B]
    ggml_tensor * kp = ggml_permute(ctx, k, 0, 2, 1, 3);  // [hd, Lk, K, B]
    ggml_tensor * kq = ggml_mul_mat(ctx, kp, qp);         // [Lk, Lq, N, B]
    ggml_mul_mat_set_prec(kq, GGML_PREC_F32);
    kq = ggml_soft_max_ext(ctx, kq, mask, scale, 0.0f);
    ggml_tensor * vt = ggml_cont(ctx, ggml_permute(ctx, v, 1, 2, 0, 3));  // [Lk, hd, K, B]
    ggml_tensor * kqv = ggml_mul_mat(ctx, vt, kq);                         // [hd, Lq, N, B]
    ggml_tensor * out = ggml_permute(ctx, kqv, 0, 2, 1, 3);                // [hd, N, Lq, B]
    return ggml_cont_3d(ctx, out, hd * N, Lq, B);
}

static bool layer_is_view(const ggml_tensor * t) {
    return t->op == GGML_OP_VIEW || t->op == GGML_OP_RESHAPE || t->op == GGML_OP_PERMUTE ||
           t->op == GGML_OP_TRANSPOSE || t->op == GGML_OP_NONE;
}

std::map<std::string, int64_t> layer_graph_stats(const ggml_cgraph * gf) {
    std::map<std::string, int64_t> st;
    ggml_cgraph * g = const_cast<ggml_cgraph *>(gf);  // the accessors take a non-const graph; nothing is changed
    const int n = ggml_graph_n_nodes(g);
    auto uses = [](const ggml_tensor * t, const ggml_tensor * src) { return t->src[0] == src || t->src[1] == src; };
    for (int i = 0; i < n; ++i) {
        const ggml_tensor * t = ggml_graph_node(g, i);
        if (layer_is_view(t)) continue;
        st["nodes"] += 1;
        st[ggml_op_desc(t)] += 1;
        if (t->op == GGML_OP_RMS_NORM && i + 2 < n) {
            const ggml_tensor * m = ggml_graph_node(g, i + 1), * a = ggml_graph_node(g, i + 2);
            if (m->op == GGML_OP_MUL && uses(m, t) && a->op == GGML_OP_ADD && uses(a, m)) st["rms_norm_mul_add"] += 1;
        }
    }
    st.emplace("rms_norm_mul_add", 0);
    return st;
}

ggml_tensor * layer_name(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * t, bool keep, const char * fmt, ...) {
    char buf[GGML_MAX_NAME];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    // A kept view would not keep its source's memory alive through allocation: keep a copy instead.
    if (keep && t->view_src != nullptr) t = ggml_cont(ctx, t);
    ggml_set_name(t, buf);
    if (keep) {
        ggml_set_output(t);
        ggml_build_forward_expand(gf, t);
    }
    return t;
}

bool layer_stage_cb(ggml_tensor * t, bool ask, void * user) {
    const bool is_marker = std::strncmp(t->name, "stage:", 6) == 0;
    if (ask) return is_marker;
    auto * st = (layer_stage_timer *) user;
    if (is_marker) {
        st->at_ms[t->name + 6] =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - st->t0).count();
    }
    return true;
}

bool layer_op_profile_cb(ggml_tensor * t, bool ask, void * user) {
    if (ask) return !layer_is_view(t);
    auto * p = (layer_op_profile *) user;
    const auto now = std::chrono::steady_clock::now();
    const std::string op = ggml_op_desc(t);
    p->ms[op] += std::chrono::duration<double, std::milli>(now - p->t_last).count();
    p->count[op] += 1;
    p->t_last = now;
    return true;
}

void layer_read_outputs(ggml_cgraph * gf, const std::vector<std::string> & names, const char * family,
                        std::map<std::string, std::vector<float>> & data,
                        std::map<std::string, std::vector<int64_t>> & shapes) {
    for (const auto & name : names) {
        ggml_tensor * t = ggml_graph_get_tensor(gf, name.c_str());
        if (t == nullptr || !(t->flags & GGML_TENSOR_FLAG_OUTPUT)) {
            throw Error(std::string(family) + ": unknown intermediate '" + name + "'");
        }
        if (!ggml_is_contiguous(t)) throw Error(std::string(family) + ": intermediate '" + name + "' is not contiguous");
        std::vector<float> d((size_t) ggml_nelements(t));
        ggml_backend_tensor_get(t, d.data(), 0, d.size() * sizeof(float));
        std::vector<int64_t> shape;
        for (int k = ggml_n_dims(t) - 1; k >= 0; --k) shape.push_back(t->ne[k]);
        data[name] = std::move(d);
        shapes[name] = std::move(shape);
    }
}

}  // namespace actquant
