// pi05.cpp — π₀.₅ graph (see pi05.h). Mirrors actquant_core/policies/pi05/model.py operation by operation.
#include "pi05.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <sstream>

#include "errors.h"
#include "graph-exec.h"
#include "models/layers.h"

namespace actquant {

namespace {

using clk = std::chrono::steady_clock;

double ms_since(clk::time_point t0) {
    return std::chrono::duration<double, std::milli>(clk::now() - t0).count();
}

std::string fmt_name(const char * f, int i) {
    char buf[128];
    std::snprintf(buf, sizeof(buf), f, i);
    return buf;
}

}  // namespace

// A built graph with its inputs and output (see infer: kept allocated and reused while the shapes match).
struct Pi05Graph {
    explicit Pi05Graph(size_t max_nodes) : G(max_nodes) {}
    GraphContext G;
    int Cv = 0, Tv = 0;  // valid cameras, valid prompt tokens
    ggml_tensor * in_patches = nullptr;
    ggml_tensor * in_tokens = nullptr;
    ggml_tensor * in_pos_prefix = nullptr;
    ggml_tensor * in_pos_suffix = nullptr;
    ggml_tensor * in_noise = nullptr;
    ggml_tensor * in_temb = nullptr;
    ggml_tensor * actions = nullptr;
};

Pi05Runtime::~Pi05Runtime() = default;

pi05_hparams pi05_default_hparams() { return pi05_hparams{}; }

Pi05Runtime::Pi05Runtime(const std::string & gguf_path, const pi05_hparams & hp, const backend_params & bp) : hp_(hp) {
    if (hp.image_size % hp.patch_size != 0) throw Error("pi05: image_size must be a multiple of patch_size");
    if (hp.v_width % hp.v_heads != 0) throw Error("pi05: vision width must be a multiple of vision heads");
    if (hp.n_heads % hp.n_kv_heads != 0) throw Error("pi05: n_heads must be a multiple of n_kv_heads");
    if (hp.num_steps < 1 || hp.horizon < 1 || hp.n_cameras < 1) throw Error("pi05: num_steps, horizon, n_cameras >= 1");
    backend_ = std::make_unique<Backend>(bp);
    model_ = std::make_unique<GgufModel>(gguf_path, backend_.get());
    validate_tensors();
}

void Pi05Runtime::validate_tensors() const {
    const auto & h = hp_;
    const int64_t pp3 = 3LL * h.patch_size * h.patch_size, qd = (int64_t) h.n_heads * h.head_dim,
                  kvd = (int64_t) h.n_kv_heads * h.head_dim;
    const GgufModel & m = *model_;
    m.get("v.patch_embd.weight", {h.v_width, pp3});
    m.get("v.patch_embd.bias", {h.v_width});
    m.get("v.position_embd.weight", {h.n_patches(), h.v_width});
    for (int i = 0; i < h.v_depth; ++i) {
        for (const char * n : {"ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "attn_q.bias", "attn_k.bias",
                               "attn_v.bias", "attn_out.bias", "ffn_down.bias"}) {
            m.get(fmt_name("v.blk.%d.", i) + n, {h.v_width});
        }
        for (const char * n : {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_out.weight"}) {
            m.get(fmt_name("v.blk.%d.", i) + n, {h.v_width, h.v_width});
        }
        m.get(fmt_name("v.blk.%d.ffn_up.weight", i), {h.v_mlp, h.v_width});
        m.get(fmt_name("v.blk.%d.ffn_up.bias", i), {h.v_mlp});
        m.get(fmt_name("v.blk.%d.ffn_down.weight", i), {h.v_width, h.v_mlp});
    }
    m.get("v.post_ln.weight", {h.v_width});
    m.get("v.post_ln.bias", {h.v_width});
    m.get("mm.proj.weight", {h.lm_width, h.v_width});
    m.get("mm.proj.bias", {h.lm_width});
    m.get("lm.token_embd.weight", {h.vocab, h.lm_width});
    for (int i = 0; i < h.depth; ++i) {
        const std::string L = fmt_name("lm.blk.%d.", i), E = fmt_name("ex.blk.%d.", i);
        m.get(L + "attn_norm.weight", {h.lm_width});
        m.get(L + "ffn_norm.weight", {h.lm_width});
        m.get(L + "attn_q.weight", {qd, h.lm_width});
        m.get(L + "attn_k.weight", {kvd, h.lm_width});
        m.get(L + "attn_v.weight", {kvd, h.lm_width});
        m.get(L + "attn_output.weight", {h.lm_width, qd});
        m.get(L + "ffn_gate.weight", {h.lm_mlp, h.lm_width});
        m.get(L + "ffn_up.weight", {h.lm_mlp, h.lm_width});
        m.get(L + "ffn_down.weight", {h.lm_width, h.lm_mlp});
        m.get(E + "attn_norm_ada.weight", {3LL * h.ex_width, h.ex_width});
        m.get(E + "attn_norm_ada.bias", {3LL * h.ex_width});
        m.get(E + "ffn_norm_ada.weight", {3LL * h.ex_width, h.ex_width});
        m.get(E + "ffn_norm_ada.bias", {3LL * h.ex_width});
        m.get(E + "attn_q.weight", {qd, h.ex_width});
        m.get(E + "attn_k.weight", {kvd, h.ex_width});
        m.get(E + "attn_v.weight", {kvd, h.ex_width});
        m.get(E + "attn_output.weight", {h.ex_width, qd});
        m.get(E + "ffn_gate.weight", {h.ex_mlp, h.ex_width});
        m.get(E + "ffn_up.weight", {h.ex_mlp, h.ex_width});
        m.get(E + "ffn_down.weight", {h.ex_width, h.ex_mlp});
    }
    m.get("ex.output_norm_ada.weight", {3LL * h.ex_width, h.ex_width});
    m.get("ex.output_norm_ada.bias", {3LL * h.ex_width});
    m.get("act.in_proj.weight", {h.ex_width, h.action_dim});
    m.get("act.in_proj.bias", {h.ex_width});
    m.get("act.out_proj.weight", {h.action_dim, h.ex_width});
    m.get("act.out_proj.bias", {h.action_dim});
    m.get("time.mlp_in.weight", {h.ex_width, h.ex_width});
    m.get("time.mlp_in.bias", {h.ex_width});
    m.get("time.mlp_out.weight", {h.ex_width, h.ex_width});
    m.get("time.mlp_out.bias", {h.ex_width});
}

pi05_outputs Pi05Runtime::infer(const pi05_inputs & in, const std::vector<std::string> & collect) {
    const auto t_total = clk::now();
    const auto & h = hp_;
    const GgufModel & m = *model_;
    const int C = h.n_cameras, S = h.image_size, p = h.patch_size, P = h.n_patches(), T = h.max_tokens;
    const int H = h.horizon, A = h.action_dim;
    const int vhd = h.v_width / h.v_heads;
    const std::set<std::string> want(collect.begin(), collect.end());
    auto keep = [&](const std::string & n) { return want.count(n) > 0; };

    // ---- host-side inputs -------------------------------------------------------------------------
    for (size_t i = 0, n = (size_t) H * A; i < n; ++i) {
        if (!std::isfinite(in.noise[i])) throw Error("pi05: noise has a non-finite value at index " + std::to_string(i));
    }
    for (size_t i = 0, n = (size_t) C * 3 * S * S; i < n; ++i) {
        if (!std::isfinite(in.images[i])) throw Error("pi05: image data has a non-finite value at index " + std::to_string(i));
    }
    // Padding is dropped before the graph: a masked camera's tokens and padded text tokens are keys nobody
    // may attend to (mask value -2.38e38 -> weight exactly 0) and queries whose outputs nobody reads, so the
    // valid rows are bit-for-bit the computation of the padded reference, with positions cumsum(valid) - 1 =
    // 0..Lv-1. Prefix and suffix then need no attention mask at all.
    std::vector<int> cams;
    for (int cam = 0; cam < C; ++cam)
        if (in.image_mask[cam]) cams.push_back(cam);
    if (cams.empty()) throw Error("pi05: every camera slot is masked; at least one image is required");
    const int Cv = (int) cams.size();
    std::vector<int32_t> toks;
    for (int j = 0; j < T; ++j) {
        if (!in.token_mask[j]) continue;
        if (in.tokens[j] < 0 || in.tokens[j] >= h.vocab) {
            throw Error("pi05: token id " + std::to_string(in.tokens[j]) + " at position " + std::to_string(j) +
                        " is outside the vocabulary [0, " + std::to_string(h.vocab) + ")");
        }
        toks.push_back(in.tokens[j]);
    }
    if (toks.empty()) throw Error("pi05: the prompt has no valid token");
    const int Tv = (int) toks.size();
    const int Lv = Cv * P + Tv;  // valid prefix length
    // im2col of the valid cameras: patches [Cv, P, 3*p*p], column c*p*p + ky*p + kx, patches row-major (py, px).
    const int g = S / p;
    std::vector<float> patches((size_t) Cv * P * 3 * p * p);
    for (int ci = 0; ci < Cv; ++ci)
        for (int py = 0; py < g; ++py)
            for (int px = 0; px < g; ++px) {
                float * dst = patches.data() + ((size_t) ci * P + py * g + px) * 3 * p * p;
                for (int c = 0; c < 3; ++c)
                    for (int ky = 0; ky < p; ++ky)
                        for (int kx = 0; kx < p; ++kx)
                            dst[(c * p + ky) * p + kx] =
                                in.images[(((size_t) cams[ci] * 3 + c) * S + py * p + ky) * S + px * p + kx];
            }
    std::vector<int32_t> pos_prefix(Lv), pos_suffix(H);
    for (int j = 0; j < Lv; ++j) pos_prefix[j] = j;
    for (int j = 0; j < H; ++j) pos_suffix[j] = Lv + j;
    // Time embeddings (posemb_sincos in float64, then float32), one per Euler step.
    const double dt = -1.0 / h.num_steps;
    const int half = h.ex_width / 2;
    std::vector<float> temb((size_t) h.num_steps * h.ex_width);
    for (int s = 0; s < h.num_steps; ++s) {
        const double t = (double) (float) (1.0 + s * dt);  // the reference builds t as float32
        for (int j = 0; j < half; ++j) {
            const double frac = half > 1 ? (double) j / (half - 1) : 0.0;
            const double period = h.t_min_period * std::pow(h.t_max_period / h.t_min_period, frac);
            const double x = t * (2.0 * M_PI / period);
            temb[(size_t) s * h.ex_width + j] = (float) std::sin(x);
            temb[(size_t) s * h.ex_width + half + j] = (float) std::cos(x);
        }
    }

    // ---- phase 1: build the graph (no allocation), or reuse the cached one -------------------------------
    // A graph that collects no intermediates is kept, allocated, and reused while the valid camera count and
    // prompt length stay the same (the usual case on a robot: fixed cameras, one instruction). That skips
    // build and allocation, and gives the CUDA backend the same nodes at the same addresses on every call,
    // which it captures once and replays as a CUDA graph (GGML_CUDA_GRAPHS) instead of launching thousands
    // of small kernels per chunk.
    auto t_build = clk::now();
    const bool reuse = collect.empty() && cache_ && cache_->Cv == Cv && cache_->Tv == Tv;
    std::unique_ptr<Pi05Graph> fresh;
    if (!reuse) {
        cache_.reset();  // the backend's allocation is about to belong to the graph built now
        fresh = std::make_unique<Pi05Graph>(65536);
        fresh->Cv = Cv;
        fresh->Tv = Tv;
        GraphContext & G = fresh->G;
        ggml_context * ctx = G.ctx();
        ggml_cgraph * gf = G.graph();
        ggml_tensor * in_patches = fresh->in_patches = G.input("patches", {3LL * p * p, P, Cv});
        ggml_tensor * in_tokens = fresh->in_tokens = G.input("tokens", {Tv}, GGML_TYPE_I32);
        ggml_tensor * in_pos_prefix = fresh->in_pos_prefix = G.input("pos_prefix", {Lv}, GGML_TYPE_I32);
        ggml_tensor * in_pos_suffix = fresh->in_pos_suffix = G.input("pos_suffix", {H}, GGML_TYPE_I32);
        ggml_tensor * in_noise = fresh->in_noise = G.input("noise", {A, H});
        ggml_tensor * in_temb = fresh->in_temb = G.input("time_emb", {h.ex_width, h.num_steps});
        const bool gpu = backend_->is_gpu();  // single-node GELU / GeGLU where the backend computes them in f32
        ggml_backend_t fa = layer_flash_backend(backend_->primary(), gpu);  // fused attention on the GPU

        // Vision: the valid cameras as one batch. x [v_width, P, Cv].
        ggml_tensor * x = layer_linear(ctx, m.get("v.patch_embd.weight"), m.get("v.patch_embd.bias"), in_patches);
        x = ggml_add(ctx, x, m.get("v.position_embd.weight"));
        for (int i = 0; i < h.v_depth; ++i) {
            auto W = [&](const char * n) { return m.get(fmt_name("v.blk.%d.", i) + n); };
            ggml_tensor * hN = layer_norm(ctx, x, W("ln1.weight"), W("ln1.bias"), h.v_ln_eps);
            ggml_tensor * q = ggml_reshape_4d(ctx, layer_linear(ctx, W("attn_q.weight"), W("attn_q.bias"), hN), vhd, h.v_heads, P, Cv);
            ggml_tensor * k = ggml_reshape_4d(ctx, layer_linear(ctx, W("attn_k.weight"), W("attn_k.bias"), hN), vhd, h.v_heads, P, Cv);
            ggml_tensor * v = ggml_reshape_4d(ctx, layer_linear(ctx, W("attn_v.weight"), W("attn_v.bias"), hN), vhd, h.v_heads, P, Cv);
            ggml_tensor * a = layer_attention(ctx, q, k, v, nullptr, 1.0f / std::sqrt((float) vhd), fa);
            x = ggml_add(ctx, x, layer_linear(ctx, W("attn_out.weight"), W("attn_out.bias"), a));
            hN = layer_norm(ctx, x, W("ln2.weight"), W("ln2.bias"), h.v_ln_eps);
            hN = layer_gelu_tanh(ctx, layer_linear(ctx, W("ffn_up.weight"), W("ffn_up.bias"), hN), gpu);
            x = ggml_add(ctx, x, layer_linear(ctx, W("ffn_down.weight"), W("ffn_down.bias"), hN));
        }
        x = layer_norm(ctx, x, m.get("v.post_ln.weight"), m.get("v.post_ln.bias"), h.v_ln_eps);
        ggml_tensor * img = layer_linear(ctx, m.get("mm.proj.weight"), m.get("mm.proj.bias"), x);  // [D, P, Cv]
        for (int ci = 0; ci < Cv; ++ci) {  // named by camera slot
            const std::string n = fmt_name("vision_emb.%d", cams[ci]);
            if (keep(n)) layer_name(ctx, gf, ggml_view_2d(ctx, img, h.lm_width, P, img->nb[1], ci * img->nb[2]), true, "%s", n.c_str());
        }
        layer_name(ctx, gf, img, false, "stage:vision");
        ggml_build_forward_expand(gf, img);

        // Prefix embedding: image tokens (camera-major), then scaled token embeddings, valid ones only. [D, Lv]
        ggml_tensor * txt = ggml_scale(ctx, ggml_get_rows(ctx, m.get("lm.token_embd.weight"), in_tokens), h.embed_scale);
        ggml_tensor * xp = ggml_concat(ctx, ggml_reshape_2d(ctx, img, h.lm_width, (int64_t) P * Cv), txt, 1);
        layer_name(ctx, gf, xp, keep("prefix_emb"), "prefix_emb");

        // Gemma prefix pass: K/V of every layer (the cache); the last layer needs no attention output.
        const float attn_scale = 1.0f / std::sqrt((float) h.head_dim);
        std::vector<ggml_tensor *> kc(h.depth), vc(h.depth);
        for (int i = 0; i < h.depth; ++i) {
            auto W = [&](const char * n) { return m.get(fmt_name("lm.blk.%d.", i) + n); };
            ggml_tensor * hN = layer_rms_norm(ctx, xp, W("attn_norm.weight"), h.rms_eps);
            auto [q, k, v] = layer_qkv(ctx, *model_, fmt_name("lm.blk.%d.", i), hN, h.head_dim, h.n_heads, h.n_kv_heads);
            q = ggml_rope_ext(ctx, q, in_pos_prefix, nullptr, h.head_dim, GGML_ROPE_TYPE_NEOX, 0, h.rope_theta, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
            k = ggml_rope_ext(ctx, k, in_pos_prefix, nullptr, h.head_dim, GGML_ROPE_TYPE_NEOX, 0, h.rope_theta, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
            kc[i] = layer_name(ctx, gf, k, keep(fmt_name("prefix_k.%d", i)), "prefix_k.%d", i);
            vc[i] = layer_name(ctx, gf, v, keep(fmt_name("prefix_v.%d", i)), "prefix_v.%d", i);
            if (i == h.depth - 1) break;
            ggml_tensor * a = layer_attention(ctx, q, k, v, nullptr, attn_scale, fa);
            xp = ggml_add(ctx, xp, ggml_mul_mat(ctx, W("attn_output.weight"), a));
            hN = layer_rms_norm(ctx, xp, W("ffn_norm.weight"), h.rms_eps);
            hN = layer_ffn_geglu(ctx, *model_, fmt_name("lm.blk.%d.", i), hN, gpu);
            xp = ggml_add(ctx, xp, ggml_mul_mat(ctx, W("ffn_down.weight"), hN));
        }
        // Make the prefix the first thing computed; its end is a timing marker.
        for (int i = 0; i < h.depth; ++i) {
            ggml_build_forward_expand(gf, kc[i]);
            ggml_build_forward_expand(gf, vc[i]);
        }
        ggml_tensor * prefix_done = layer_name(ctx, gf, ggml_view_1d(ctx, vc[h.depth - 1], 1, 0), false, "stage:prefix");
        ggml_build_forward_expand(gf, prefix_done);

        // Expert: num_steps Euler steps from t = 1 to 0.
        // The time conditioning depends on the step alone, not on x_t: the time MLP and every adaRMS modulation
        // (scale, shift, gate) are computed for all steps at once before the loop, one [3W, steps] matmul per
        // norm instead of one per norm and step (fewer, larger kernels; ~4 fewer nodes per layer and step).
        ggml_tensor * cond_all = ggml_silu(ctx, layer_linear(ctx, m.get("time.mlp_in.weight"), m.get("time.mlp_in.bias"), in_temb));
        cond_all = ggml_silu(ctx, layer_linear(ctx, m.get("time.mlp_out.weight"), m.get("time.mlp_out.bias"), cond_all));  // [W, steps]
        // Per norm: mod [3W, steps] (scale, shift, gate rows) and mod + 1 (read for 1 + scale), for all steps, so a
        // step's modulation is rms_norm -> mul -> add on views (three consecutive nodes, which the CUDA backend
        // fuses into one kernel).
        std::map<std::string, std::pair<ggml_tensor *, ggml_tensor *>> mods;  // norm -> (mod, mod + 1)
        auto mod_of = [&](const std::string & base) {
            auto it = mods.find(base);
            if (it != mods.end()) return it->second;
            ggml_tensor * mod = layer_linear(ctx, m.get(base + ".weight"), m.get(base + ".bias"), cond_all);
            return mods[base] = {mod, ggml_scale_bias(ctx, mod, 1.0f, 1.0f)};  // all rows + 1; the scale rows are read
        };
        auto ada = [&](const std::string & base, int step, ggml_tensor * xin, ggml_tensor ** gate) {
            auto [mod, mod1] = mod_of(base);
            const size_t es = ggml_element_size(mod), col = (size_t) step * mod->nb[1];
            ggml_tensor * scale = ggml_view_1d(ctx, mod1, h.ex_width, col);
            ggml_tensor * shift = ggml_view_1d(ctx, mod, h.ex_width, col + es * h.ex_width);
            if (gate) *gate = ggml_view_1d(ctx, mod, h.ex_width, col + 2 * es * h.ex_width);
            // The views enter the graph first: added by the traversal of mul / add, a view node would sit between
            // rms_norm, mul and add, and the CUDA backend fuses the three only at consecutive node indices.
            ggml_build_forward_expand(gf, scale);
            ggml_build_forward_expand(gf, shift);
            return ggml_add(ctx, ggml_mul(ctx, ggml_rms_norm(ctx, xin, h.rms_eps), scale), shift);
        };
        ggml_tensor * xt = in_noise;  // [A, H]
        for (int s = 0; s < h.num_steps; ++s) {
            layer_name(ctx, gf, xt, keep(fmt_name("x_t.%d", s)), "x_t.%d", s);
            if (keep(fmt_name("time_cond.%d", s))) {
                layer_name(ctx, gf, ggml_view_1d(ctx, cond_all, h.ex_width, (size_t) s * cond_all->nb[1]), true,
                           "time_cond.%d", s);
            }
            ggml_tensor * xs = layer_linear(ctx, m.get("act.in_proj.weight"), m.get("act.in_proj.bias"), xt);  // [Wex, H]
            for (int i = 0; i < h.depth; ++i) {
                const std::string E = fmt_name("ex.blk.%d.", i);
                auto W = [&](const char * n) { return m.get(E + n); };
                ggml_tensor * gate = nullptr;
                ggml_tensor * hN = ada(E + "attn_norm_ada", s, xs, &gate);
                auto [q, k, v] = layer_qkv(ctx, *model_, E, hN, h.head_dim, h.n_heads, h.n_kv_heads);
                q = ggml_rope_ext(ctx, q, in_pos_suffix, nullptr, h.head_dim, GGML_ROPE_TYPE_NEOX, 0, h.rope_theta, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
                k = ggml_rope_ext(ctx, k, in_pos_suffix, nullptr, h.head_dim, GGML_ROPE_TYPE_NEOX, 0, h.rope_theta, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
                ggml_tensor * ka = ggml_concat(ctx, kc[i], k, 2);
                ggml_tensor * va = ggml_concat(ctx, vc[i], v, 2);
                ggml_tensor * a = layer_attention(ctx, q, ka, va, nullptr, attn_scale, fa);
                xs = ggml_add(ctx, xs, ggml_mul(ctx, ggml_mul_mat(ctx, W("attn_output.weight"), a), gate));
                hN = ada(E + "ffn_norm_ada", s, xs, &gate);
                hN = layer_ffn_geglu(ctx, *model_, E, hN, gpu);
                xs = ggml_add(ctx, xs, ggml_mul(ctx, ggml_mul_mat(ctx, W("ffn_down.weight"), hN), gate));
            }
            xs = ada("ex.output_norm_ada", s, xs, nullptr);
            ggml_tensor * vel = layer_linear(ctx, m.get("act.out_proj.weight"), m.get("act.out_proj.bias"), xs);  // [A, H]
            layer_name(ctx, gf, vel, keep(fmt_name("velocity.%d", s)), "velocity.%d", s);
            xt = ggml_add(ctx, xt, ggml_scale(ctx, vel, (float) dt));
        }
        fresh->actions = G.output(xt, "actions");
        if (ggml_graph_n_nodes(gf) >= (int) G.max_nodes()) throw Error("pi05: graph exceeds its node budget");
    }
    Pi05Graph & PG = reuse ? *cache_ : *fresh;
    ggml_cgraph * gf = PG.G.graph();
    const double build_ms = ms_since(t_build);

    // ---- phase 2: allocate (a new graph only), set inputs ----------------------------------------------
    auto t_alloc = clk::now();
    if (!reuse) backend_->alloc(gf, PG.G.max_nodes());
    tensor_set_f32(PG.in_patches, patches.data(), patches.size());
    ggml_backend_tensor_set(PG.in_tokens, toks.data(), 0, sizeof(int32_t) * Tv);
    ggml_backend_tensor_set(PG.in_pos_prefix, pos_prefix.data(), 0, sizeof(int32_t) * Lv);
    ggml_backend_tensor_set(PG.in_pos_suffix, pos_suffix.data(), 0, sizeof(int32_t) * H);
    tensor_set_f32(PG.in_noise, in.noise, (size_t) H * A);
    tensor_set_f32(PG.in_temb, temb.data(), temb.size());
    const double alloc_ms = ms_since(t_alloc);

    // ---- phase 3: compute ------------------------------------------------------------------------
    layer_stage_timer st;
    st.t0 = clk::now();
    // Stage marks need the scheduler to stop at them (three graph pieces, each synchronised; on CUDA three CUDA
    // graphs): without them the whole graph goes to the backend in one piece.
    layer_op_profile prof;
    prof.t_last = st.t0;
    const bool stages = stage_timing_ && !op_profile_;
    if (op_profile_) backend_->set_eval_callback(layer_op_profile_cb, &prof);
    else if (stages) backend_->set_eval_callback(layer_stage_cb, &st);
    backend_->run(gf);
    if (op_profile_ || stages) backend_->set_eval_callback(nullptr, nullptr);
    const double compute_ms = ms_since(st.t0);

    pi05_outputs out;
    out.actions.resize((size_t) H * A);
    tensor_get_f32(PG.actions, out.actions.data(), out.actions.size());
    layer_read_outputs(gf, collect, "pi05", out.intermediates, out.shapes);
    if (fresh && collect.empty()) cache_ = std::move(fresh);
    out.timing_ms["build"] = build_ms;
    out.timing_ms["alloc"] = alloc_ms;
    const double t_vis = st.at_ms.count("vision") ? st.at_ms["vision"] : 0.0;
    const double t_pre = st.at_ms.count("prefix") ? st.at_ms["prefix"] : t_vis;
    for (const auto & [op, ms] : prof.ms) {
        out.timing_ms["op:" + op] = ms;
        out.timing_ms["op_n:" + op] = (double) prof.count[op];
    }
    if (stages) {
        out.timing_ms["vision"] = t_vis;
        out.timing_ms["prefix"] = t_pre - t_vis;
        out.timing_ms["denoise"] = compute_ms - t_pre;
    }
    out.timing_ms["compute"] = compute_ms;
    out.timing_ms["total"] = ms_since(t_total);
    return out;
}

std::map<std::string, int64_t> Pi05Runtime::graph_stats() const {
    return cache_ ? layer_graph_stats(cache_->G.graph()) : std::map<std::string, int64_t>{};
}

}  // namespace actquant
