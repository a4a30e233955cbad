// openvla_oft.h — the OpenVLA-OFT policy as one GGML graph: DINOv2 (registers, LayerScale) and SigLIP
// ViTs per image (features of the second-to-last block, prefix dropped, optional FiLM) → fused GELU
// projector → proprio token → one bidirectional Llama pass over [BOS][image tokens][proprio][prompt]
// [zeroed action slots][stop] → L1 MLP-ResNet head → normalised actions [chunk, action_dim].
// Mirrors actquant_core/policies/openvla_oft/model.py; canonical names: OFT_TENSOR_NAMES, named
// intermediates: OFT_INTER_* (actquant_core/constants.py).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "gguf-model.h"

namespace actquant {

struct oft_hparams {
    int image_size = 224, patch_size = 14, n_images = 2;
    int d_width = 1024, d_depth = 24, d_heads = 16, d_mlp = 4096, d_registers = 4;
    int s_width = 1152, s_depth = 27, s_heads = 16, s_mlp = 4304;
    float vit_ln_eps = 1e-6f;
    bool siglip_gelu_tanh = false, use_film = false, use_proprio = true;
    int proj_hidden = 8704;
    int lm_width = 4096, depth = 32, n_heads = 32, n_kv_heads = 32, lm_mlp = 11008, vocab = 32064;
    float rms_eps = 1e-5f, rope_theta = 10000.0f;
    int action_dim = 7, chunk = 8, proprio_dim = 8, head_hidden = 4096, head_blocks = 2;
    float head_ln_eps = 1e-5f;

    int n_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
    int n_action_tokens() const { return chunk * action_dim; }
};

oft_hparams oft_default_hparams();

struct oft_inputs {
    const float * images = nullptr;   // [n_images, 6, S, S]: per image 3 DINO- then 3 SigLIP-normalised channels
    const float * proprio = nullptr;  // [proprio_dim] (normalised); may be null when !use_proprio
    const int32_t * tokens = nullptr;  // [n_tokens]: BOS, prompt, chunk*action_dim placeholders, stop (no pads)
    int n_tokens = 0;
};

struct oft_outputs {
    std::vector<float> actions;                               // [chunk, action_dim]
    std::map<std::string, std::vector<float>> intermediates;  // name -> data (row-major, numpy order)
    std::map<std::string, std::vector<int64_t>> shapes;       // name -> numpy shape
    std::map<std::string, double> timing_ms;  // "build", "alloc", "vision", "llm", "head", "compute", "total"
};

struct OftGraph;

class OftRuntime {
public:
    OftRuntime(const std::string & gguf_path, const oft_hparams & hp, const backend_params & bp);
    ~OftRuntime();
    const oft_hparams & hparams() const { return hp_; }
    const GgufModel & model() const { return *model_; }
    const Backend & backend() const { return *backend_; }

    // collect: names of intermediates to return (empty = none). Throws Error for bad inputs.
    oft_outputs infer(const oft_inputs & in, const std::vector<std::string> & collect);

private:
    oft_hparams hp_;
    std::unique_ptr<Backend> backend_;
    std::unique_ptr<GgufModel> model_;
    std::unique_ptr<OftGraph> cache_;  // last graph without collected intermediates, allocated on backend_
    void validate_tensors() const;
};

}  // namespace actquant
