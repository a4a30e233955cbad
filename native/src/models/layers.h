// layers.h — graph building blocks shared by every model family (phase 1: no allocation happens here).
//
// Layout conventions (GGML order, ne[0] first): a token sequence is [width, L] (optionally [width, L, B]);
// attention heads are [head_dim, n_heads, L(, B)]; weights are HF [out, in] matrices, i.e. ggml ne=[in, out],
// so ggml_mul_mat(W, x) = x @ W.T.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "ggml.h"
#include "ggml-backend.h"

namespace actquant {

class GgufModel;

// y = W x (+ b). b may be null.
ggml_tensor * layer_linear(ggml_context * ctx, ggml_tensor * W, ggml_tensor * b, ggml_tensor * x);

// LayerNorm over ne[0] with affine (w, b may be null).
ggml_tensor * layer_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b, float eps);

// RMSNorm over ne[0] times w (w may be null). Gemma's (1 + w) is folded into w at export.
ggml_tensor * layer_rms_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, float eps);

// gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// native = false: composed exactly from f32 ops (5 nodes, silu(x a) / a with a = 2k (1 + 0.044715 x^2)); the CPU backend's ggml_gelu goes through an FP16
// table, ~2.4e-4 relative per element (see reference ggml.md). native = true: one GGML GELU node, for backends
// that evaluate it in f32 with the same formula (CUDA: ggml_cuda_op_gelu_single) -- pass Backend::is_gpu().
ggml_tensor * layer_gelu_tanh(ggml_context * ctx, ggml_tensor * x, bool native = false);

// GeGLU: gelu_tanh(gate) * up, gate and up [n, ...] of one shape. native = true: one GGML GEGLU node (see
// layer_gelu_tanh), which the CUDA backend also fuses with the two matmuls where its mat-vec path applies.
ggml_tensor * layer_geglu_tanh(ggml_context * ctx, ggml_tensor * gate, ggml_tensor * up, bool native = false);

// Q, K, V projections of x [width, L] as [hd, n, L] tensors (views): one matmul by the weights fused
// (GgufModel::fused of <prefix>attn_q/k/v.weight) where the model allows it, else three.
struct layer_qkv_t {
    ggml_tensor * q, * k, * v;
};
layer_qkv_t layer_qkv(ggml_context * ctx, GgufModel & m, const std::string & prefix, ggml_tensor * x, int64_t hd,
                      int64_t n_q, int64_t n_kv);

// Gemma's MLP input half: gelu_tanh(ffn_gate x) * (ffn_up x) [mlp, L]. native (GPU): gate and up fused into one
// matmul where the model allows it, followed by one GEGLU node; otherwise the two matmuls and
// layer_geglu_tanh.
ggml_tensor * layer_ffn_geglu(ggml_context * ctx, GgufModel & m, const std::string & prefix, ggml_tensor * x,
                              bool native);

// Softmax attention with grouped KV heads.
//   q: [hd, N, Lq, B], k: [hd, K, Lk, B], v: [hd, K, Lk, B] (N % K == 0; query head n uses kv head n / (N/K))
//   mask: [Lk, Lq] f32 added to the scaled logits (0 or a large negative finite value), or null.
// Returns [hd*N, Lq, B].
// flash: a backend (the GPU's) on which to run it as one GGML_OP_FLASH_ATTN_EXT node (F32 precision) when that
// backend supports the node (head size, types) and there is no mask; otherwise, or with null, the explicit
// matmul / softmax / matmul form.  layer_flash_backend() gives the backend to pass.
ggml_tensor * layer_attention(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v,
                              ggml_tensor * mask, float scale, ggml_backend_t flash = nullptr);

// The backend for layer_attention's fused form, from the environment's ACTQUANT_FLASH_ATTN: unset or "gpu" (the
// default): primary on a GPU backend, else null; "0": null everywhere (the explicit form, for A/B runs); "all":
// primary on every backend (the CPU's fused kernel too; parity checks of the fused form without a GPU).
ggml_backend_t layer_flash_backend(ggml_backend_t primary, bool gpu);

// Op counts of a built graph, for checking what the backend can fuse: "nodes" (compute nodes, views excluded),
// one entry per op name (ggml_op_desc), and "rms_norm_mul_add": RMS_NORM, MUL, ADD at consecutive node indices,
// each consuming the one before (the sequence GGML's CUDA backend runs as one kernel; a view node between them,
// e.g. of the scale, breaks it).
std::map<std::string, int64_t> layer_graph_stats(const ggml_cgraph * gf);

// Names t (printf-style) and marks it as a graph output when keep is true, so it survives allocation
// and can be read back for parity dumps.
ggml_tensor * layer_name(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * t, bool keep, const char * fmt, ...);

// Stage timing through the scheduler's eval callback, without splitting the graph by hand: name a node
// "stage:<name>" (layer_name with keep=false, then ggml_build_forward_expand it) and run the graph with
// Backend::set_eval_callback(layer_stage_cb, &timer). at_ms[<name>] = ms from t0 to when that node was done.
struct layer_stage_timer {
    std::chrono::steady_clock::time_point t0;
    std::map<std::string, double> at_ms;
};
bool layer_stage_cb(ggml_tensor * t, bool ask, void * user);

// Per-op profile: Backend::set_eval_callback(layer_op_profile_cb, &prof) with prof.t_last = the compute start.
// The scheduler then runs (and synchronises) one compute node at a time -- a diagnostic mode, slower than a
// normal call -- and ms[op] / count[op] sum each op's wall time (ggml_op_desc: unary and GLU ops by name; view
// nodes run with the next compute node and count as it).
struct layer_op_profile {
    std::chrono::steady_clock::time_point t_last;
    std::map<std::string, double> ms;
    std::map<std::string, int64_t> count;
};
bool layer_op_profile_cb(ggml_tensor * t, bool ask, void * user);

// After compute: copies each kept intermediate named in `names` to host (numpy order, row-major data and shape).
// Throws Error "<family>: unknown intermediate '<name>'" for a name that is no kept graph output.
void layer_read_outputs(ggml_cgraph * gf, const std::vector<std::string> & names, const char * family,
                        std::map<std::string, std::vector<float>> & data,
                        std::map<std::string, std::vector<int64_t>> & shapes);

}  // namespace actquant
