// openvla_oft.cpp — OpenVLA-OFT graph (see openvla_oft.h). Mirrors actquant_core/policies/openvla_oft/model.py
// operation by operation; inputs (im2col patches, positions, the action-slot mask, the FiLM averaging
// weights) are prepared host-side.
#include "openvla_oft.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <set>

#include "errors.h"
#include "graph-exec.h"
#include "models/layers.h"

namespace actquant {

namespace {

using clk = std::chrono::steady_clock;

double ms_since(clk::time_point t0) {
    return std::chrono::duration<double, std::milli>(clk::now() - t0).count();
}

std::string blk(const char * prefix, int i, const char * name) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "%s.blk.%d.%s", prefix, i, name);
    return buf;
}

// One timm ViT backbone up to (and including) its second-to-last block, prefix tokens dropped.
struct vit_desc {
    const char * prefix;  // "vd" | "vs"
    int width, depth, heads, mlp, registers;
    bool cls, layerscale, gelu_tanh;
};

// patches: [3*p*p, P, I]; film_cond: [lm_width, 1] or null. Returns features [width, P, I].
// gpu: single-node GELU (layer_gelu_tanh's native form); fa: layer_attention's fused-attention backend or null.
ggml_tensor * vit_features(ggml_context * ctx, const GgufModel & m, const vit_desc & d, ggml_tensor * patches,
                           ggml_tensor * film_cond, float eps, bool gpu, ggml_backend_t fa) {
    const std::string pre = d.prefix;
    const int64_t P = patches->ne[1], I = patches->ne[2];
    const int hd = d.width / d.heads;
    ggml_tensor * x = layer_linear(ctx, m.get(pre + ".patch_embd.weight"), m.get(pre + ".patch_embd.bias"), patches);
    x = ggml_add(ctx, x, m.get(pre + ".position_embd.weight"));  // [w, P, I]
    int64_t n_prefix = 0;
    ggml_tensor * front = nullptr;
    if (d.cls) {
        front = ggml_repeat_4d(ctx, ggml_reshape_3d(ctx, m.get(pre + ".cls_embd.weight"), d.width, 1, 1), d.width, 1, I, 1);
        n_prefix += 1;
    }
    if (d.registers > 0) {
        ggml_tensor * reg = ggml_repeat_4d(ctx, ggml_reshape_3d(ctx, m.get(pre + ".reg_embd.weight"), d.width, d.registers, 1),
                                           d.width, d.registers, I, 1);
        front = front ? ggml_concat(ctx, front, reg, 1) : reg;
        n_prefix += d.registers;
    }
    if (front) x = ggml_concat(ctx, front, x, 1);  // [w, n_prefix + P, I]
    const int64_t T = n_prefix + P;
    const float scale = 1.0f / std::sqrt((float) hd);
    for (int i = 0; i < d.depth - 1; ++i) {
        auto W = [&](const char * n) { return m.get(blk(d.prefix, i, n)); };
        ggml_tensor * h = layer_norm(ctx, x, W("ln1.weight"), W("ln1.bias"), eps);
        ggml_tensor * qkv = layer_linear(ctx, W("attn_qkv.weight"), W("attn_qkv.bias"), h);  // [3w, T, I]
        const size_t es = ggml_element_size(qkv);
        auto part = [&](int j) {
            return ggml_cont(ctx, ggml_view_4d(ctx, qkv, hd, d.heads, T, I, hd * es, qkv->nb[1], qkv->nb[2],
                                               (size_t) j * d.width * es));
        };
        ggml_tensor * a = layer_attention(ctx, part(0), part(1), part(2), nullptr, scale, fa);  // [w, T, I]
        ggml_tensor * y = layer_linear(ctx, W("attn_out.weight"), W("attn_out.bias"), a);
        if (d.layerscale) y = ggml_mul(ctx, y, W("ls1.weight"));
        x = ggml_add(ctx, x, y);
        if (film_cond) {
            ggml_tensor * gamma = layer_linear(ctx, W("film_scale.weight"), W("film_scale.bias"), film_cond);  // [w, 1]
            ggml_tensor * beta = layer_linear(ctx, W("film_shift.weight"), W("film_shift.bias"), film_cond);
            x = ggml_add(ctx, ggml_mul(ctx, x, ggml_scale_bias(ctx, gamma, 1.0f, 1.0f)), beta);
        }
        h = layer_norm(ctx, x, W("ln2.weight"), W("ln2.bias"), eps);
        h = layer_linear(ctx, W("ffn_up.weight"), W("ffn_up.bias"), h);
        h = d.gelu_tanh ? layer_gelu_tanh(ctx, h, gpu) : ggml_gelu_erf(ctx, h);
        y = layer_linear(ctx, W("ffn_down.weight"), W("ffn_down.bias"), h);
        if (d.layerscale) y = ggml_mul(ctx, y, W("ls2.weight"));
        x = ggml_add(ctx, x, y);
    }
    return ggml_cont(ctx, ggml_view_3d(ctx, x, d.width, P, I, x->nb[1], x->nb[2], n_prefix * x->nb[1]));
}

// im2col of channels [c0, c0+3) of every image: images [I, 6, S, S] -> [I, P, 3*p*p] (column c*p*p + ky*p + kx).
std::vector<float> im2col(const float * images, int I, int S, int p, int c0) {
    const int g = S / p, P = g * g, K = 3 * p * p;
    std::vector<float> out((size_t) I * P * K);
    for (int im = 0; im < I; ++im)
        for (int py = 0; py < g; ++py)
            for (int px = 0; px < g; ++px) {
                float * dst = out.data() + ((size_t) im * P + py * g + px) * K;
                for (int c = 0; c < 3; ++c)
                    for (int ky = 0; ky < p; ++ky)
                        for (int kx = 0; kx < p; ++kx)
                            dst[(c * p + ky) * p + kx] =
                                images[(((size_t) im * 6 + c0 + c) * S + py * p + ky) * S + px * p + kx];
            }
    return out;
}

}  // namespace

// A built graph with its inputs and output (see infer: kept allocated and reused while the shapes match).
struct OftGraph {
    explicit OftGraph(size_t max_nodes) : G(max_nodes) {}
    GraphContext G;
    int T = 0;  // token count
    ggml_tensor * in_pd = nullptr;
    ggml_tensor * in_ps = nullptr;
    ggml_tensor * in_tokens = nullptr;
    ggml_tensor * in_keep = nullptr;
    ggml_tensor * in_pos = nullptr;
    ggml_tensor * in_proprio = nullptr;
    ggml_tensor * in_film_w = nullptr;
    ggml_tensor * actions = nullptr;
};

OftRuntime::~OftRuntime() = default;

oft_hparams oft_default_hparams() { return oft_hparams{}; }

OftRuntime::OftRuntime(const std::string & gguf_path, const oft_hparams & hp, const backend_params & bp) : hp_(hp) {
    if (hp.image_size % hp.patch_size != 0) throw Error("openvla_oft: image_size must be a multiple of patch_size");
    if (hp.d_width % hp.d_heads != 0 || hp.s_width % hp.s_heads != 0)
        throw Error("openvla_oft: ViT widths must be multiples of their head counts");
    if (hp.d_depth < 2 || hp.s_depth < 2) throw Error("openvla_oft: ViT depths must be >= 2 (second-to-last block features)");
    if (hp.lm_width % hp.n_heads != 0 || hp.n_heads % hp.n_kv_heads != 0)
        throw Error("openvla_oft: lm_width % num_heads and num_heads % num_kv_heads must be 0");
    if (hp.chunk < 1 || hp.action_dim < 1 || hp.n_images < 1) throw Error("openvla_oft: chunk, action_dim, n_images >= 1");
    backend_ = std::make_unique<Backend>(bp);
    model_ = std::make_unique<GgufModel>(gguf_path, backend_.get());
    validate_tensors();
}

void OftRuntime::validate_tensors() const {
    const auto & h = hp_;
    const GgufModel & m = *model_;
    const int64_t pp3 = 3LL * h.patch_size * h.patch_size, D = h.lm_width, hd = h.lm_width / h.n_heads;
    struct vit { const char * pre; int w, depth, mlp; bool ls; };
    for (const vit & v : {vit{"vd", h.d_width, h.d_depth, h.d_mlp, true}, vit{"vs", h.s_width, h.s_depth, h.s_mlp, false}}) {
        const std::string pre = v.pre;
        m.get(pre + ".patch_embd.weight", {v.w, pp3});
        m.get(pre + ".patch_embd.bias", {v.w});
        m.get(pre + ".position_embd.weight", {h.n_patches(), v.w});
        for (int i = 0; i < v.depth - 1; ++i) {
            for (const char * n : {"ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "attn_out.bias", "ffn_down.bias"})
                m.get(blk(v.pre, i, n), {v.w});
            m.get(blk(v.pre, i, "attn_qkv.weight"), {3LL * v.w, v.w});
            m.get(blk(v.pre, i, "attn_qkv.bias"), {3LL * v.w});
            m.get(blk(v.pre, i, "attn_out.weight"), {v.w, v.w});
            m.get(blk(v.pre, i, "ffn_up.weight"), {v.mlp, v.w});
            m.get(blk(v.pre, i, "ffn_up.bias"), {v.mlp});
            m.get(blk(v.pre, i, "ffn_down.weight"), {v.w, v.mlp});
            if (v.ls) {
                m.get(blk(v.pre, i, "ls1.weight"), {v.w});
                m.get(blk(v.pre, i, "ls2.weight"), {v.w});
            }
            if (h.use_film) {
                for (const char * n : {"film_scale.weight", "film_shift.weight"}) m.get(blk(v.pre, i, n), {v.w, D});
                for (const char * n : {"film_scale.bias", "film_shift.bias"}) m.get(blk(v.pre, i, n), {v.w});
            }
        }
    }
    m.get("vd.cls_embd.weight", {h.d_width});
    if (h.d_registers > 0) m.get("vd.reg_embd.weight", {h.d_registers, h.d_width});
    m.get("mm.fc1.weight", {h.proj_hidden, (int64_t) h.d_width + h.s_width});
    m.get("mm.fc1.bias", {h.proj_hidden});
    m.get("mm.fc2.weight", {D, h.proj_hidden});
    m.get("mm.fc2.bias", {D});
    m.get("mm.fc3.weight", {D, D});
    m.get("mm.fc3.bias", {D});
    if (h.use_proprio) {
        m.get("proprio.fc1.weight", {D, h.proprio_dim});
        m.get("proprio.fc1.bias", {D});
        m.get("proprio.fc2.weight", {D, D});
        m.get("proprio.fc2.bias", {D});
    }
    m.get("lm.token_embd.weight", {h.vocab, D});
    for (int i = 0; i < h.depth; ++i) {
        m.get(blk("lm", i, "attn_norm.weight"), {D});
        m.get(blk("lm", i, "ffn_norm.weight"), {D});
        m.get(blk("lm", i, "attn_q.weight"), {h.n_heads * hd, D});
        m.get(blk("lm", i, "attn_k.weight"), {h.n_kv_heads * hd, D});
        m.get(blk("lm", i, "attn_v.weight"), {h.n_kv_heads * hd, D});
        m.get(blk("lm", i, "attn_output.weight"), {D, h.n_heads * hd});
        m.get(blk("lm", i, "ffn_gate.weight"), {h.lm_mlp, D});
        m.get(blk("lm", i, "ffn_up.weight"), {h.lm_mlp, D});
        m.get(blk("lm", i, "ffn_down.weight"), {D, h.lm_mlp});
    }
    m.get("lm.output_norm.weight", {D});
    const int64_t hin = (int64_t) h.action_dim * D;
    m.get("head.ln1.weight", {hin});
    m.get("head.ln1.bias", {hin});
    m.get("head.fc1.weight", {h.head_hidden, hin});
    m.get("head.fc1.bias", {h.head_hidden});
    for (int j = 0; j < h.head_blocks; ++j) {
        m.get(blk("head", j, "ln.weight"), {h.head_hidden});
        m.get(blk("head", j, "ln.bias"), {h.head_hidden});
        m.get(blk("head", j, "fc.weight"), {h.head_hidden, h.head_hidden});
        m.get(blk("head", j, "fc.bias"), {h.head_hidden});
    }
    m.get("head.ln2.weight", {h.head_hidden});
    m.get("head.ln2.bias", {h.head_hidden});
    m.get("head.fc2.weight", {h.action_dim, h.head_hidden});
    m.get("head.fc2.bias", {h.action_dim});
}

oft_outputs OftRuntime::infer(const oft_inputs & in, const std::vector<std::string> & collect) {
    const auto t_total = clk::now();
    const auto & h = hp_;
    const GgufModel & m = *model_;
    const int I = h.n_images, S = h.image_size, p = h.patch_size, P = h.n_patches(), D = h.lm_width;
    const int T = in.n_tokens, nA = h.n_action_tokens();
    const int Nv = I * P + (h.use_proprio ? 1 : 0), L = T + Nv;
    const int a0 = T - nA - 1;  // first action slot in the token sequence
    const std::set<std::string> want(collect.begin(), collect.end());
    auto keep = [&](const std::string & n) { return want.count(n) > 0; };

    // ---- host-side inputs -------------------------------------------------------------------------
    if (T < nA + 2) {
        throw Error("openvla_oft: token sequence has " + std::to_string(T) + " ids; it needs BOS, the prompt, " +
                    std::to_string(nA) + " action placeholders and the stop token");
    }
    for (int j = 0; j < T; ++j) {
        if (in.tokens[j] < 0 || in.tokens[j] >= h.vocab) {
            throw Error("openvla_oft: token id " + std::to_string(in.tokens[j]) + " at position " + std::to_string(j) +
                        " is outside the vocabulary [0, " + std::to_string(h.vocab) + ")");
        }
    }
    for (size_t i = 0, n = (size_t) I * 6 * S * S; i < n; ++i) {
        if (!std::isfinite(in.images[i])) throw Error("openvla_oft: image data has a non-finite value at index " + std::to_string(i));
    }
    if (h.use_proprio) {
        if (in.proprio == nullptr) throw Error("openvla_oft: this policy needs proprio");
        for (int i = 0; i < h.proprio_dim; ++i)
            if (!std::isfinite(in.proprio[i])) throw Error("openvla_oft: proprio has a non-finite value at index " + std::to_string(i));
    }
    const std::vector<float> patches_d = im2col(in.images, I, S, p, 0), patches_s = im2col(in.images, I, S, p, 3);
    std::vector<float> text_keep(T, 1.0f), film_w(T, 0.0f);
    for (int j = a0; j < a0 + nA; ++j) text_keep[j] = 0.0f;
    for (int j = 0; j < T; ++j) film_w[j] = text_keep[j] / (float) (T - nA);
    std::vector<int32_t> pos(L);
    for (int j = 0; j < L; ++j) pos[j] = j;

    // ---- phase 1: build the graph (no allocation), or reuse the cached one -------------------------------
    // As in pi05.cpp: a graph without collected intermediates is kept allocated and reused while the token
    // count is the same (no rebuild / reallocation; on CUDA, a graph GGML can replay).
    auto t_build = clk::now();
    const bool reuse = collect.empty() && cache_ && cache_->T == T;
    std::unique_ptr<OftGraph> fresh;
    if (!reuse) {
        cache_.reset();  // the backend's allocation is about to belong to the graph built now
        fresh = std::make_unique<OftGraph>(32768);
        fresh->T = T;
        GraphContext & G = fresh->G;
        ggml_context * ctx = G.ctx();
        ggml_cgraph * gf = G.graph();
        ggml_tensor * in_pd = fresh->in_pd = G.input("patches_dino", {3LL * p * p, P, I});
        ggml_tensor * in_ps = fresh->in_ps = G.input("patches_siglip", {3LL * p * p, P, I});
        ggml_tensor * in_tokens = fresh->in_tokens = G.input("tokens", {T}, GGML_TYPE_I32);
        ggml_tensor * in_keep = fresh->in_keep = G.input("text_keep", {1, T});
        ggml_tensor * in_pos = fresh->in_pos = G.input("positions", {L}, GGML_TYPE_I32);
        ggml_tensor * in_proprio = fresh->in_proprio = h.use_proprio ? G.input("proprio", {h.proprio_dim, 1}) : nullptr;
        ggml_tensor * in_film_w = fresh->in_film_w = h.use_film ? G.input("film_weights", {T, 1}) : nullptr;

        ggml_tensor * txt = ggml_get_rows(ctx, m.get("lm.token_embd.weight"), in_tokens);  // [D, T]
        ggml_tensor * film = nullptr;
        if (h.use_film) {  // mean embedding of the non-action tokens: [D, 1]
            film = ggml_mul_mat(ctx, ggml_cont(ctx, ggml_transpose(ctx, txt)), in_film_w);
            layer_name(ctx, gf, film, keep("film_cond"), "film_cond");
    }
        txt = ggml_mul(ctx, txt, in_keep);  // zeroed action embeddings

        const vit_desc dd{"vd", h.d_width, h.d_depth, h.d_heads, h.d_mlp, h.d_registers, true, true, false};
        const vit_desc sd{"vs", h.s_width, h.s_depth, h.s_heads, h.s_mlp, 0, false, false, h.siglip_gelu_tanh};
        ggml_backend_t fa = layer_flash_backend(backend_->primary(), backend_->is_gpu());
        ggml_tensor * fd = vit_features(ctx, m, dd, in_pd, film, h.vit_ln_eps, backend_->is_gpu(), fa);  // [dw, P, I]
        ggml_tensor * fs = vit_features(ctx, m, sd, in_ps, film, h.vit_ln_eps, backend_->is_gpu(), fa);  // [sw, P, I]
        for (int im = 0; im < I; ++im) {
            char n[64];
            std::snprintf(n, sizeof(n), "dino_feat.%d", im);
            if (keep(n)) layer_name(ctx, gf, ggml_view_2d(ctx, fd, h.d_width, P, fd->nb[1], im * fd->nb[2]), true, "%s", n);
            std::snprintf(n, sizeof(n), "siglip_feat.%d", im);
            if (keep(n)) layer_name(ctx, gf, ggml_view_2d(ctx, fs, h.s_width, P, fs->nb[1], im * fs->nb[2]), true, "%s", n);
    }
        ggml_tensor * feats = ggml_reshape_2d(ctx, ggml_concat(ctx, fd, fs, 0), (int64_t) h.d_width + h.s_width, (int64_t) P * I);
        ggml_tensor * vis = ggml_gelu_erf(ctx, layer_linear(ctx, m.get("mm.fc1.weight"), m.get("mm.fc1.bias"), feats));
        vis = ggml_gelu_erf(ctx, layer_linear(ctx, m.get("mm.fc2.weight"), m.get("mm.fc2.bias"), vis));
        vis = layer_linear(ctx, m.get("mm.fc3.weight"), m.get("mm.fc3.bias"), vis);  // [D, I*P]
        layer_name(ctx, gf, vis, keep("projector_out"), "projector_out");
        ggml_build_forward_expand(gf, layer_name(ctx, gf, ggml_view_1d(ctx, vis, 1, 0), false, "stage:vision"));
        if (h.use_proprio) {
            ggml_tensor * pt = ggml_gelu_erf(ctx, layer_linear(ctx, m.get("proprio.fc1.weight"), m.get("proprio.fc1.bias"), in_proprio));
            pt = layer_linear(ctx, m.get("proprio.fc2.weight"), m.get("proprio.fc2.bias"), pt);  // [D, 1]
            layer_name(ctx, gf, pt, keep("proprio_emb"), "proprio_emb");
            vis = ggml_concat(ctx, vis, pt, 1);
    }
        // [BOS][vision (+ proprio)][rest of the text]
        ggml_tensor * bos = ggml_view_2d(ctx, txt, D, 1, txt->nb[1], 0);
        ggml_tensor * rest = ggml_view_2d(ctx, txt, D, T - 1, txt->nb[1], txt->nb[1]);
        ggml_tensor * x = ggml_concat(ctx, ggml_concat(ctx, ggml_cont(ctx, bos), vis, 1), ggml_cont(ctx, rest), 1);  // [D, L]
        layer_name(ctx, gf, x, keep("input_emb"), "input_emb");

        // Bidirectional Llama: no mask (one sequence, no pads), positions 0..L-1.
        const int hd = D / h.n_heads;
        const float attn_scale = 1.0f / std::sqrt((float) hd);
        for (int i = 0; i < h.depth; ++i) {
            auto W = [&](const char * n) { return m.get(blk("lm", i, n)); };
            ggml_tensor * hN = layer_rms_norm(ctx, x, W("attn_norm.weight"), h.rms_eps);
            auto [q, k, v] = layer_qkv(ctx, *model_, blk("lm", i, ""), hN, hd, h.n_heads, h.n_kv_heads);
            q = ggml_rope_ext(ctx, q, in_pos, nullptr, hd, GGML_ROPE_TYPE_NEOX, 0, h.rope_theta, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
            k = ggml_rope_ext(ctx, k, in_pos, nullptr, hd, GGML_ROPE_TYPE_NEOX, 0, h.rope_theta, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
            ggml_tensor * a = layer_attention(ctx, q, k, v, nullptr, attn_scale, fa);
            x = ggml_add(ctx, x, ggml_mul_mat(ctx, W("attn_output.weight"), a));
            hN = layer_rms_norm(ctx, x, W("ffn_norm.weight"), h.rms_eps);
            hN = ggml_mul(ctx, ggml_silu(ctx, ggml_mul_mat(ctx, W("ffn_gate.weight"), hN)), ggml_mul_mat(ctx, W("ffn_up.weight"), hN));
            x = ggml_add(ctx, x, ggml_mul_mat(ctx, W("ffn_down.weight"), hN));
    }
        x = layer_rms_norm(ctx, x, m.get("lm.output_norm.weight"), h.rms_eps);
        ggml_tensor * ah = ggml_cont(ctx, ggml_view_2d(ctx, x, D, nA, x->nb[1], (size_t) (Nv + a0) * x->nb[1]));  // [D, nA]
        layer_name(ctx, gf, ah, keep("action_hidden"), "action_hidden");
        ggml_build_forward_expand(gf, layer_name(ctx, gf, ggml_view_1d(ctx, ah, 1, 0), false, "stage:llm"));

        // L1 regression head (MLP-ResNet) on [action_dim*D, chunk].
        ggml_tensor * y = ggml_reshape_2d(ctx, ah, (int64_t) h.action_dim * D, h.chunk);
        y = layer_norm(ctx, y, m.get("head.ln1.weight"), m.get("head.ln1.bias"), h.head_ln_eps);
        y = ggml_relu(ctx, layer_linear(ctx, m.get("head.fc1.weight"), m.get("head.fc1.bias"), y));
        for (int j = 0; j < h.head_blocks; ++j) {
            ggml_tensor * r = layer_norm(ctx, y, m.get(blk("head", j, "ln.weight")), m.get(blk("head", j, "ln.bias")), h.head_ln_eps);
            y = ggml_add(ctx, y, ggml_relu(ctx, layer_linear(ctx, m.get(blk("head", j, "fc.weight")), m.get(blk("head", j, "fc.bias")), r)));
    }
        y = layer_norm(ctx, y, m.get("head.ln2.weight"), m.get("head.ln2.bias"), h.head_ln_eps);
        y = layer_linear(ctx, m.get("head.fc2.weight"), m.get("head.fc2.bias"), y);  // [A, chunk]
        fresh->actions = G.output(y, "actions");
        if (ggml_graph_n_nodes(gf) >= (int) G.max_nodes()) throw Error("openvla_oft: graph exceeds its node budget");
    }
    OftGraph & OG = reuse ? *cache_ : *fresh;
    ggml_cgraph * gf = OG.G.graph();
    const double build_ms = ms_since(t_build);

    // ---- phase 2: allocate (a new graph only), set inputs ----------------------------------------------
    auto t_alloc = clk::now();
    if (!reuse) backend_->alloc(gf, OG.G.max_nodes());
    tensor_set_f32(OG.in_pd, patches_d.data(), patches_d.size());
    tensor_set_f32(OG.in_ps, patches_s.data(), patches_s.size());
    ggml_backend_tensor_set(OG.in_tokens, in.tokens, 0, sizeof(int32_t) * T);
    tensor_set_f32(OG.in_keep, text_keep.data(), text_keep.size());
    ggml_backend_tensor_set(OG.in_pos, pos.data(), 0, sizeof(int32_t) * L);
    if (OG.in_proprio) tensor_set_f32(OG.in_proprio, in.proprio, h.proprio_dim);
    if (OG.in_film_w) tensor_set_f32(OG.in_film_w, film_w.data(), film_w.size());
    const double alloc_ms = ms_since(t_alloc);

    // ---- phase 3: compute ------------------------------------------------------------------------
    layer_stage_timer st;
    st.t0 = clk::now();
    backend_->set_eval_callback(layer_stage_cb, &st);
    backend_->run(gf);
    backend_->set_eval_callback(nullptr, nullptr);
    const double compute_ms = ms_since(st.t0);

    oft_outputs out;
    out.actions.resize((size_t) h.chunk * h.action_dim);
    tensor_get_f32(OG.actions, out.actions.data(), out.actions.size());
    layer_read_outputs(gf, collect, "openvla_oft", out.intermediates, out.shapes);
    if (fresh && collect.empty()) cache_ = std::move(fresh);
    out.timing_ms["build"] = build_ms;
    out.timing_ms["alloc"] = alloc_ms;
    out.timing_ms["compute"] = compute_ms;
    const double t_vis = st.at_ms.count("vision") ? st.at_ms["vision"] : 0.0;
    const double t_llm = st.at_ms.count("llm") ? st.at_ms["llm"] : t_vis;
    out.timing_ms["vision"] = t_vis;
    out.timing_ms["llm"] = t_llm - t_vis;
    out.timing_ms["head"] = compute_ms - t_llm;
    out.timing_ms["total"] = ms_since(t_total);
    return out;
}

}  // namespace actquant
