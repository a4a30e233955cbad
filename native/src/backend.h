// backend.h — the compute backends a model runs on: CPU always, CUDA when built with GGML_CUDA and asked for.
#pragma once

#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"

namespace actquant {

struct backend_params {
    int n_threads = 2;      // CPU threads
    std::string device = "cpu";  // "cpu" | "cuda" | "cuda:N"
    // CPU only: place the weights that GGML's CPU backend can repack (Q4_0/Q4_K/IQ4_NL/MXFP4 on AVX2,
    // Q2_K on AVX-512, more on ARM; rows a multiple of 8) in its CPU_REPACK buffer type, whose interleaved
    // layout feeds the batched GEMM kernels (prefix / vision matmuls).  Costs a copy of those weights in
    // RAM (their mapped pages are released) and a one-off conversion at load.
    bool repack = true;
};

backend_params backend_default_params();

// Owns the backends and one scheduler over them ([GPU, CPU] or [CPU]).
class Backend {
public:
    explicit Backend(const backend_params & params);
    ~Backend();
    Backend(const Backend &) = delete;
    Backend & operator=(const Backend &) = delete;

    ggml_backend_t primary() const { return backends_.front(); }  // where weights live
    ggml_backend_t cpu() const { return cpu_; }
    bool is_gpu() const { return backends_.size() > 1; }
    const std::string & description() const { return description_; }
    int n_threads() const { return n_threads_; }
    // CPU_REPACK buffer type when repacking is on and this build has it; nullptr otherwise.
    ggml_backend_buffer_type_t repack_buft() const { return repack_buft_; }
    // Whether weight ``w`` (type and shape as loaded) would be repacked for a MUL_MAT with f32 input.
    bool repack_supported(const ggml_tensor * w) const;

    // Phase 2: allocates every tensor of graph that has no buffer yet (inputs, intermediates).
    // Graph nodes must come from a no-alloc context. Set input data after this, then run().
    void alloc(ggml_cgraph * graph, size_t graph_size);
    // Phase 3: computes an allocated graph.
    void run(ggml_cgraph * graph);
    // Observer called by the scheduler for nodes it asks about (stage timing, debugging); null to clear.
    void set_eval_callback(ggml_backend_sched_eval_callback cb, void * user) {
        eval_cb_ = cb;
        eval_user_ = user;
    }

private:
    std::vector<ggml_backend_t> backends_;
    ggml_backend_t cpu_ = nullptr;
    ggml_backend_sched_t sched_ = nullptr;
    size_t sched_graph_size_ = 0;
    std::string description_;
    int n_threads_ = 1;
    ggml_backend_buffer_type_t repack_buft_ = nullptr;
    ggml_backend_buffer_t repack_probe_ = nullptr;  // zero-size buffer of repack_buft_, for supports_op probes
    ggml_backend_sched_eval_callback eval_cb_ = nullptr;
    void * eval_user_ = nullptr;
};

// Whether this build has the CUDA backend and how many devices it sees.
bool backend_has_cuda();
int backend_cuda_device_count();

}  // namespace actquant
