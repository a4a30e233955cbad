#include "backend.h"

#include <cstdlib>
#include <sstream>

#include "errors.h"
#include "ggml-cpu.h"
#ifdef ACTQUANT_WITH_CUDA
#include "ggml-cuda.h"
#endif

namespace actquant {

backend_params backend_default_params() { return backend_params{}; }

bool backend_has_cuda() {
#ifdef ACTQUANT_WITH_CUDA
    return true;
#else
    return false;
#endif
}

int backend_cuda_device_count() {
#ifdef ACTQUANT_WITH_CUDA
    return ggml_backend_cuda_get_device_count();
#else
    return 0;
#endif
}

Backend::Backend(const backend_params & params) : n_threads_(params.n_threads) {
    log_capture_install();
    if (params.n_threads < 1) {
        throw Error("n_threads must be >= 1, got " + std::to_string(params.n_threads));
    }
    std::ostringstream desc;
    if (params.device.rfind("cuda", 0) == 0) {
#ifdef ACTQUANT_WITH_CUDA
        int dev = 0;
        if (params.device.size() > 5 && params.device[4] == ':') dev = std::stoi(params.device.substr(5));
        if (dev < 0 || dev >= ggml_backend_cuda_get_device_count()) {
            throw Error("device '" + params.device + "': CUDA device not present (" +
                        std::to_string(ggml_backend_cuda_get_device_count()) + " found)");
        }
        // F16 weights: GGML's cuBLAS path on Volta+ otherwise multiplies with FP16 accumulation into an FP16
        // result and converts that to F32 afterwards (one more kernel per matmul, and an FP16 sum over up to
        // 16k products). Ask for F32 accumulation written as F32 directly, unless the user chose a compute type
        // (GGML reads this once per process, at its first cuBLAS matmul). BF16 weights always accumulate in F32.
        if (std::getenv("GGML_CUDA_FORCE_CUBLAS_COMPUTE_16F") == nullptr) {
            setenv("GGML_CUDA_FORCE_CUBLAS_COMPUTE_32F", "1", 0);
        }
        ggml_backend_t gpu = ggml_backend_cuda_init(dev);
        if (gpu == nullptr) throw Error("device '" + params.device + "': ggml_backend_cuda_init failed");
        backends_.push_back(gpu);
        desc << "CUDA" << dev << "+";
#else
        throw Error("device '" + params.device + "' requested but this build has no CUDA backend "
                    "(rebuild with -DGGML_CUDA=ON)");
#endif
    } else if (params.device != "cpu") {
        throw Error("unknown device '" + params.device + "'; expected 'cpu', 'cuda' or 'cuda:N'");
    }
    cpu_ = ggml_backend_cpu_init();
    if (cpu_ == nullptr) throw Error("ggml_backend_cpu_init failed");
    ggml_backend_cpu_set_n_threads(cpu_, params.n_threads);
    backends_.push_back(cpu_);
    desc << "CPU(" << params.n_threads << " threads";
    if (params.repack && !is_gpu()) {
        ggml_backend_dev_t dev = ggml_backend_get_device(cpu_);
        ggml_backend_reg_t reg = dev ? ggml_backend_dev_backend_reg(dev) : nullptr;
        auto get_extra = reg ? (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(
                                   reg, "ggml_backend_dev_get_extra_bufts")
                             : nullptr;
        for (ggml_backend_buffer_type_t * b = get_extra ? get_extra(dev) : nullptr; b && *b; ++b) {
            if (std::string(ggml_backend_buft_name(*b)) == "CPU_REPACK") repack_buft_ = *b;
        }
        if (repack_buft_) repack_probe_ = ggml_backend_buft_alloc_buffer(repack_buft_, 0);
        if (repack_probe_ == nullptr) repack_buft_ = nullptr;
        if (repack_buft_) desc << ", repack";
    }
    desc << ")";
    description_ = desc.str();
}

bool Backend::repack_supported(const ggml_tensor * w) const {
    if (repack_buft_ == nullptr || ggml_n_dims(w) != 2 || !ggml_is_quantized(w->type)) return false;
    // A MUL_MAT node with a stand-in of w in the repack buffer type: the CPU device answers from the same
    // rule its compute path uses (CPU features, type, rows multiple of the interleave).
    ggml_init_params ip{/*mem_size=*/4 * ggml_tensor_overhead(), /*mem_buffer=*/nullptr, /*no_alloc=*/true};
    ggml_context * ctx = ggml_init(ip);
    if (ctx == nullptr) return false;
    ggml_tensor * a = ggml_new_tensor_2d(ctx, w->type, w->ne[0], w->ne[1]);
    ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, w->ne[0], 16);
    ggml_tensor * y = ggml_mul_mat(ctx, a, x);
    a->buffer = repack_probe_;
    const bool ok = ggml_backend_dev_supports_op(ggml_backend_get_device(cpu_), y);
    ggml_free(ctx);
    return ok;
}

Backend::~Backend() {
    if (sched_) ggml_backend_sched_free(sched_);
    if (repack_probe_) ggml_backend_buffer_free(repack_probe_);
    for (auto b : backends_) ggml_backend_free(b);
}

void Backend::alloc(ggml_cgraph * graph, size_t graph_size) {
    if (sched_ == nullptr || sched_graph_size_ < graph_size) {
        if (sched_) ggml_backend_sched_free(sched_);
        sched_graph_size_ = graph_size;
        sched_ = ggml_backend_sched_new(backends_.data(), nullptr, (int) backends_.size(), graph_size, false, true);
        if (sched_ == nullptr) throw Error("ggml_backend_sched_new failed");
    }
    ggml_backend_sched_reset(sched_);
    if (!ggml_backend_sched_alloc_graph(sched_, graph)) {
        throw Error("could not allocate the compute graph on " + description_ + ": " + log_capture_take());
    }
}

void Backend::run(ggml_cgraph * graph) {
    if (sched_ == nullptr) throw Error("Backend::run before alloc");
    ggml_backend_sched_set_eval_callback(sched_, eval_cb_, eval_user_);
    const ggml_status st = ggml_backend_sched_graph_compute(sched_, graph);
    if (st != GGML_STATUS_SUCCESS) {
        throw Error("graph compute failed on " + description_ + " (status " + std::to_string((int) st) + ")");
    }
}

}  // namespace actquant
