// pi05.h — the π₀.₅ policy as one GGML graph: SigLIP per camera → projector → Gemma prefix pass (K/V of
// every layer computed once) → num_steps Euler steps of the adaRMS action expert attending to the cached
// prefix → normalised actions [horizon, action_dim]. Canonical tensor names: actquant_core/constants.py
// (PI05_TENSOR_NAMES); named intermediates: PI05_INTER_*.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "gguf-model.h"

namespace actquant {

struct pi05_hparams {
    int image_size = 224, patch_size = 14;
    int v_width = 1152, v_depth = 27, v_mlp = 4304, v_heads = 16;
    float v_ln_eps = 1e-6f;
    int lm_width = 2048, depth = 18, n_heads = 8, n_kv_heads = 1, head_dim = 256, lm_mlp = 16384, vocab = 257152;
    float rms_eps = 1e-6f, rope_theta = 10000.0f, embed_scale = 45.254834f;
    int ex_width = 1024, ex_mlp = 4096;
    int action_dim = 32, horizon = 50, max_tokens = 200, num_steps = 10, n_cameras = 3;
    double t_min_period = 4e-3, t_max_period = 4.0;
    float mask_value = -2.3819763e38f;

    int n_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
    int prefix_len() const { return n_cameras * n_patches() + max_tokens; }
};

pi05_hparams pi05_default_hparams();

struct pi05_inputs {
    const float * images = nullptr;         // [n_cameras, 3, S, S] in [-1, 1]
    const uint8_t * image_mask = nullptr;   // [n_cameras]
    const int32_t * tokens = nullptr;       // [max_tokens]
    const uint8_t * token_mask = nullptr;   // [max_tokens]
    const float * noise = nullptr;          // [horizon, action_dim]
};

struct pi05_outputs {
    std::vector<float> actions;                               // [horizon, action_dim]
    std::map<std::string, std::vector<float>> intermediates;  // name -> data (row-major, numpy order)
    std::map<std::string, std::vector<int64_t>> shapes;       // name -> numpy shape
    std::map<std::string, double> timing_ms;                  // "build", "alloc", "vision", "prefix", "denoise", "total"
};

struct Pi05Graph;

class Pi05Runtime {
public:
    Pi05Runtime(const std::string & gguf_path, const pi05_hparams & hp, const backend_params & bp);
    ~Pi05Runtime();
    const pi05_hparams & hparams() const { return hp_; }
    const GgufModel & model() const { return *model_; }
    const Backend & backend() const { return *backend_; }

    // collect: names of intermediates to return (empty = none). Throws Error for bad inputs.
    pi05_outputs infer(const pi05_inputs & in, const std::vector<std::string> & collect);
    // Per-stage timing ("vision", "prefix", "denoise" in timing_ms; on by default): off runs the graph in one
    // piece, without the scheduler stopping at the stage marks.
    void set_stage_timing(bool on) { stage_timing_ = on; }
    bool stage_timing() const { return stage_timing_; }
    // Per-op profile (off by default): timing_ms gets "op:<OP>" (ms) and "op_n:<OP>" (nodes) of each call, from
    // running one node at a time (layer_op_profile_cb); replaces the stage timing while on.
    void set_op_profile(bool on) { op_profile_ = on; }
    bool op_profile() const { return op_profile_; }
    // layer_graph_stats of the cached graph (built by a call without intermediates); empty before one.
    std::map<std::string, int64_t> graph_stats() const;

private:
    pi05_hparams hp_;
    std::unique_ptr<Backend> backend_;
    std::unique_ptr<GgufModel> model_;
    std::unique_ptr<Pi05Graph> cache_;  // last graph without collected intermediates, allocated on backend_
    bool stage_timing_ = true;
    bool op_profile_ = false;
    void validate_tensors() const;
};

}  // namespace actquant
