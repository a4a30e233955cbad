// gguf-model.h — a GGUF file mapped into memory, its metadata and its tensors placed on a backend.
//
// Loading (phase 1 of every model): the file is mmapped; gguf_init_from_file builds tensor metadata in a
// no-alloc ggml context; every tensor's byte range is checked against the file size before any use; on the
// CPU backend the tensors point into the mapping (zero copy) except the ones the backend repacks (see
// backend_params::repack), on a GPU they are uploaded once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend.h"
#include "ggml.h"
#include "gguf.h"

namespace actquant {

class GgufModel {
public:
    // backend == nullptr: metadata and host-side access only (no tensor placement).
    GgufModel(const std::string & path, Backend * backend);
    ~GgufModel();
    GgufModel(const GgufModel &) = delete;
    GgufModel & operator=(const GgufModel &) = delete;

    const std::string & path() const { return path_; }
    std::vector<std::string> tensor_names() const;

    // Tensor lookup. get() throws FileError naming the file and tensor when absent.
    ggml_tensor * find(const std::string & name) const;
    ggml_tensor * get(const std::string & name) const;
    // get() + shape check (numpy order: {rows, cols} = ggml {ne1, ne0}); throws FileError naming both shapes.
    ggml_tensor * get(const std::string & name, const std::vector<int64_t> & numpy_shape) const;
    // Rows of several 2-D weights as one tensor, without a copy: the parts' rows stacked in order (numpy
    // [sum rows, cols]), when they share type and row length, sit back to back in one plain buffer (GPU
    // weights are placed with each q/k/v and gate/up group back to back; on the CPU the mapping follows the
    // file, which our writer orders that way; never the CPU repack buffer, whose layout is per tensor).
    // Returns nullptr otherwise (or when a part is absent): the caller then uses the parts. One matmul by the result equals the parts' matmuls stacked.
    // The result is cached under ``name``.
    ggml_tensor * fused(const std::vector<std::string> & parts, const std::string & name);
    // Names of the fused() tensors made so far (the graphs built use them).
    std::vector<std::string> fused_names() const;
    // Host pointer to a tensor's bytes inside the mapping.
    const uint8_t * host_data(const std::string & name) const;

    // Metadata.
    gguf_context * meta() const { return gguf_; }
    bool has_key(const std::string & key) const;
    std::string get_str(const std::string & key) const;        // throws FileError when absent / not a string
    std::vector<uint8_t> get_bytes(const std::string & key) const;  // u8/i8 array
    int64_t get_int(const std::string & key) const;

    size_t file_size() const { return size_; }
    size_t weights_nbytes() const { return weights_nbytes_; }
    // Weights converted into the CPU backend's repacked layout at load (Backend repack on; 0 otherwise).
    int n_repacked() const { return n_packed_; }
    size_t repacked_nbytes() const { return packed_nbytes_; }
    // GPU backends: embedding tables kept in host memory because the GPU cannot gather rows of their type
    // (their GET_ROWS runs on the CPU, only the gathered rows are uploaded).
    const std::vector<std::string> & host_resident() const { return host_resident_; }

private:
    std::string path_;
    int fd_ = -1;
    uint8_t * map_ = nullptr;
    size_t size_ = 0;
    gguf_context * gguf_ = nullptr;
    ggml_context * ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    ggml_backend_buffer_t packed_buffer_ = nullptr;
    ggml_backend_buffer_t host_buffer_ = nullptr;  // GPU backends: tables kept in host memory (see below)
    std::vector<std::string> host_resident_;
    int n_packed_ = 0;
    size_t packed_nbytes_ = 0;
    size_t weights_nbytes_ = 0;
    std::unordered_map<std::string, ggml_tensor *> by_name_;
    ggml_context * fused_ctx_ = nullptr;  // metadata of fused() tensors (they point into the weight buffers)
    std::unordered_map<std::string, ggml_tensor *> fused_;

    [[noreturn]] void fail(const std::string & what) const;
};

}  // namespace actquant
