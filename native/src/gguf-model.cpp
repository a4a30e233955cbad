#include "gguf-model.h"

#include <algorithm>
#include <set>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <sstream>

#include "errors.h"
#include "ggml-alloc.h"

namespace actquant {

namespace {
std::string shape_str(const std::vector<int64_t> & s) {
    std::ostringstream o;
    o << '[';
    for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
    o << ']';
    return o.str();
}

std::vector<int64_t> numpy_shape_of(const ggml_tensor * t) {
    std::vector<int64_t> s;
    const int nd = ggml_n_dims(t);
    for (int i = nd - 1; i >= 0; --i) s.push_back(t->ne[i]);
    return s;
}

// The weights fused() stacks, by name suffix (actquant_core/gguf/writer.py FUSION_GROUPS writes them in this
// order); GPU placement follows it, so a group's members are allocated back to back.
const std::vector<std::vector<std::string>> kFusionGroups = {
    {"attn_q.weight", "attn_k.weight", "attn_v.weight"},
    {"ffn_gate.weight", "ffn_up.weight"},
};

bool ends_with(const std::string & s, const std::string & suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// names in file order, except that each fusion group's members present follow each other (group order), where
// the first of them appears.
std::vector<std::string> placement_order(const std::vector<std::string> & names) {
    std::set<std::string> present(names.begin(), names.end()), done;
    std::vector<std::string> out;
    for (const auto & n : names) {
        if (done.count(n)) continue;
        std::vector<std::string> group{n};
        for (const auto & g : kFusionGroups) {
            auto hit = std::find_if(g.begin(), g.end(), [&](const std::string & x) { return ends_with(n, "." + x); });
            if (hit == g.end()) continue;
            const std::string stem = n.substr(0, n.size() - hit->size());
            group.clear();
            for (const auto & x : g) {
                if (present.count(stem + x) && !done.count(stem + x)) group.push_back(stem + x);
            }
            break;
        }
        for (const auto & x : group) {
            out.push_back(x);
            done.insert(x);
        }
    }
    return out;
}

bool is_embedding(const std::string & name) { return ends_with(name, "token_embd.weight"); }

// Whether ``gpu`` runs GET_ROWS on a table of ``w``'s type (asked of the backend, not a hard-coded list).
bool gpu_gathers(ggml_backend_t gpu, const ggml_tensor * w) {
    ggml_init_params p{/*mem_size=*/4 * ggml_tensor_overhead(), /*mem_buffer=*/nullptr, /*no_alloc=*/true};
    ggml_context * ctx = ggml_init(p);
    if (ctx == nullptr) return true;
    ggml_tensor * table = ggml_new_tensor_2d(ctx, w->type, w->ne[0], 2);
    ggml_tensor * rows = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 1);
    const bool ok = ggml_backend_supports_op(gpu, ggml_get_rows(ctx, table, rows));
    ggml_free(ctx);
    return ok;
}

}  // namespace

void GgufModel::fail(const std::string & what) const { throw FileError("GGUF '" + path_ + "': " + what); }

GgufModel::GgufModel(const std::string & path, Backend * backend) : path_(path) {
    log_capture_install();
    fd_ = ::open(path.c_str(), O_RDONLY);
    if (fd_ < 0) fail(std::string("cannot open: ") + std::strerror(errno));
    struct stat st {};
    if (fstat(fd_, &st) != 0) fail(std::string("cannot stat: ") + std::strerror(errno));
    size_ = (size_t) st.st_size;
    if (size_ < 24) fail("file is too small to be GGUF (" + std::to_string(size_) + " bytes)");
    map_ = (uint8_t *) mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd_, 0);
    if (map_ == MAP_FAILED) {
        map_ = nullptr;
        fail(std::string("mmap failed: ") + std::strerror(errno));
    }
    if (std::memcmp(map_, "GGUF", 4) != 0) {
        char got[5] = {0};
        for (int i = 0; i < 4; ++i) got[i] = (map_[i] >= 32 && map_[i] < 127) ? (char) map_[i] : '?';
        fail(std::string("bad magic '") + got + "' (expected 'GGUF')");
    }
    uint32_t version = 0;
    std::memcpy(&version, map_ + 4, 4);
    if (version < 2 || version > 3) fail("unsupported GGUF version " + std::to_string(version) + " (supported: 2, 3)");

    log_capture_take();
    gguf_init_params params{/*no_alloc=*/true, /*ctx=*/&ctx_};
    gguf_ = gguf_init_from_buffer(map_, size_, params);
    if (gguf_ == nullptr) {
        const std::string why = log_capture_take();
        fail("corrupt or truncated header" + (why.empty() ? std::string() : ": " + why));
    }

    const size_t data_off = gguf_get_data_offset(gguf_);
    const int64_t n = gguf_get_n_tensors(gguf_);
    for (int64_t i = 0; i < n; ++i) {
        const char * name = gguf_get_tensor_name(gguf_, i);
        ggml_tensor * t = ggml_get_tensor(ctx_, name);
        if (t == nullptr) fail(std::string("tensor '") + name + "' missing from the ggml context");
        const size_t off = data_off + gguf_get_tensor_offset(gguf_, i);
        const size_t nb = ggml_nbytes(t);
        if (gguf_get_tensor_size(gguf_, i) != nb) {
            fail(std::string("tensor '") + name + "': size " + std::to_string(gguf_get_tensor_size(gguf_, i)) +
                 " does not match its type " + ggml_type_name(t->type) + " and shape " +
                 shape_str(numpy_shape_of(t)) + " (" + std::to_string(nb) + " bytes)");
        }
        if (off > size_ || nb > size_ - off) {
            fail(std::string("truncated: tensor '") + name + "' needs bytes [" + std::to_string(off) + ", " +
                 std::to_string(off + nb) + ") but the file has " + std::to_string(size_) + " bytes");
        }
        by_name_[name] = t;
        weights_nbytes_ += nb;
    }

    if (backend == nullptr || n == 0) return;
    if (!backend->is_gpu()) {
        // Weights the CPU backend can repack go to its CPU_REPACK buffer (a converted copy); embedding tables
        // (read by GET_ROWS, which the repacked layout does not serve) stay plain.
        std::vector<ggml_tensor *> packed;
        size_t packed_bytes = 0;
        const size_t align = backend->repack_buft() ? ggml_backend_buft_get_alignment(backend->repack_buft()) : 1;
        for (int64_t i = 0; i < n; ++i) {
            ggml_tensor * t = by_name_[gguf_get_tensor_name(gguf_, i)];
            if (!is_embedding(t->name) && backend->repack_supported(t)) {
                packed.push_back(t);
                packed_bytes += GGML_PAD(ggml_nbytes(t), align);
            }
        }
        // Zero copy for the rest: a CPU buffer over the whole mapping, each tensor pointing at its bytes.
        buffer_ = ggml_backend_cpu_buffer_from_ptr(map_, size_);
        if (buffer_ == nullptr) fail("could not wrap the mapping in a CPU buffer");
        ggml_backend_buffer_set_usage(buffer_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        if (!packed.empty()) {
            packed_buffer_ = ggml_backend_buft_alloc_buffer(backend->repack_buft(), packed_bytes + align);
            if (packed_buffer_ == nullptr) {
                fail("could not allocate " + std::to_string(packed_bytes >> 20) + " MiB for repacked weights "
                     "(load with repack=False to run from the mapping)");
            }
            ggml_backend_buffer_set_usage(packed_buffer_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            ggml_tallocr talloc = ggml_tallocr_new(packed_buffer_);
            for (ggml_tensor * t : packed) {
                if (ggml_tallocr_alloc(&talloc, t) != GGML_STATUS_SUCCESS) {
                    fail(std::string("could not place tensor '") + t->name + "' in the repack buffer");
                }
            }
        }
        for (int64_t i = 0; i < n; ++i) {
            ggml_tensor * t = by_name_[gguf_get_tensor_name(gguf_, i)];
            uint8_t * addr = map_ + data_off + gguf_get_tensor_offset(gguf_, i);
            if (t->buffer == packed_buffer_ && packed_buffer_ != nullptr) {
                ggml_backend_tensor_set(t, addr, 0, ggml_nbytes(t));  // converts to the interleaved layout
                // The original bytes are not needed for compute any more: drop their pages from this process
                // (file-backed and read-only, so host_data() still reads them back on demand).
                const uintptr_t page = (uintptr_t) sysconf(_SC_PAGESIZE);
                const uintptr_t lo = ((uintptr_t) addr + page - 1) & ~(page - 1);
                const uintptr_t hi = ((uintptr_t) addr + ggml_nbytes(t)) & ~(page - 1);
                if (hi > lo) madvise((void *) lo, hi - lo, MADV_DONTNEED);
                packed_nbytes_ += ggml_nbytes(t);
                ++n_packed_;
            } else if (ggml_backend_tensor_alloc(buffer_, t, addr) != GGML_STATUS_SUCCESS) {
                fail(std::string("could not place tensor '") + t->name + "'");
            }
        }
    } else {
        // Embedding tables whose type the GPU cannot gather (GET_ROWS of K-quants / IQ types on CUDA) stay in
        // host memory (zero copy over the mapping): the scheduler then gathers their rows on the CPU and uploads
        // only [tokens, width].  On the GPU the whole table would be copied back to the host on every call.
        std::vector<ggml_tensor *> on_gpu;
        size_t gpu_bytes = 0;
        ggml_backend_buffer_type_t gpu_buft = ggml_backend_get_default_buffer_type(backend->primary());
        const size_t align = ggml_backend_buft_get_alignment(gpu_buft);
        for (const std::string & name : placement_order(tensor_names())) {
            ggml_tensor * t = by_name_[name];
            if (is_embedding(t->name) && !gpu_gathers(backend->primary(), t)) {
                host_resident_.push_back(t->name);
            } else {
                on_gpu.push_back(t);
                gpu_bytes += GGML_PAD(ggml_backend_buft_get_alloc_size(gpu_buft, t), align);
            }
        }
        if (!on_gpu.empty()) {
            buffer_ = ggml_backend_buft_alloc_buffer(gpu_buft, gpu_bytes + align);
            if (buffer_ == nullptr) {
                fail("could not allocate " + std::to_string(gpu_bytes >> 20) + " MiB of weights on " +
                     backend->description());
            }
            ggml_backend_buffer_set_usage(buffer_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            ggml_tallocr talloc = ggml_tallocr_new(buffer_);
            for (ggml_tensor * t : on_gpu) {
                if (ggml_tallocr_alloc(&talloc, t) != GGML_STATUS_SUCCESS) {
                    fail(std::string("could not place tensor '") + t->name + "' on " + backend->description());
                }
            }
        }
        if (!host_resident_.empty()) {
            host_buffer_ = ggml_backend_cpu_buffer_from_ptr(map_, size_);
            if (host_buffer_ == nullptr) fail("could not wrap the mapping in a CPU buffer");
            ggml_backend_buffer_set_usage(host_buffer_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        }
        for (int64_t i = 0; i < n; ++i) {
            ggml_tensor * t = by_name_[gguf_get_tensor_name(gguf_, i)];
            uint8_t * addr = map_ + data_off + gguf_get_tensor_offset(gguf_, i);
            if (t->buffer == nullptr) {
                if (ggml_backend_tensor_alloc(host_buffer_, t, addr) != GGML_STATUS_SUCCESS) {
                    fail(std::string("could not place tensor '") + t->name + "' in host memory");
                }
            } else {
                ggml_backend_tensor_set(t, addr, 0, ggml_nbytes(t));
            }
        }
    }
}

GgufModel::~GgufModel() {
    if (host_buffer_) ggml_backend_buffer_free(host_buffer_);
    if (fused_ctx_) ggml_free(fused_ctx_);
    if (packed_buffer_) ggml_backend_buffer_free(packed_buffer_);
    if (buffer_) ggml_backend_buffer_free(buffer_);
    if (ctx_) ggml_free(ctx_);
    if (gguf_) gguf_free(gguf_);
    if (map_) munmap(map_, size_);
    if (fd_ >= 0) ::close(fd_);
}

std::vector<std::string> GgufModel::tensor_names() const {
    std::vector<std::string> out;
    const int64_t n = gguf_get_n_tensors(gguf_);
    for (int64_t i = 0; i < n; ++i) out.emplace_back(gguf_get_tensor_name(gguf_, i));
    return out;
}

ggml_tensor * GgufModel::find(const std::string & name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
}

ggml_tensor * GgufModel::get(const std::string & name) const {
    ggml_tensor * t = find(name);
    if (t == nullptr) fail("missing tensor '" + name + "'");
    return t;
}

ggml_tensor * GgufModel::fused(const std::vector<std::string> & parts, const std::string & name) {
    auto it = fused_.find(name);
    if (it != fused_.end()) return it->second;
    fused_[name] = nullptr;
    if (parts.size() < 2) return nullptr;
    int64_t rows = 0;
    ggml_tensor * first = find(parts[0]);
    for (size_t i = 0; i < parts.size(); ++i) {
        ggml_tensor * t = find(parts[i]);
        if (t == nullptr || t->buffer == nullptr || t->data == nullptr || ggml_n_dims(t) > 2) return nullptr;
        if (t->type != first->type || t->ne[0] != first->ne[0] || t->buffer != first->buffer) return nullptr;
        if (t->buffer == packed_buffer_ && packed_buffer_ != nullptr) return nullptr;
        if (!ggml_is_contiguous(t)) return nullptr;
        if (i > 0) {
            ggml_tensor * prev = find(parts[i - 1]);
            if ((const char *) t->data != (const char *) prev->data + ggml_nbytes(prev)) return nullptr;
        }
        rows += t->ne[1];
    }
    if (fused_ctx_ == nullptr) {
        ggml_init_params p{/*mem_size=*/256 * ggml_tensor_overhead(), /*mem_buffer=*/nullptr, /*no_alloc=*/true};
        fused_ctx_ = ggml_init(p);
        if (fused_ctx_ == nullptr) return nullptr;
    }
    if (ggml_get_mem_size(fused_ctx_) - ggml_used_mem(fused_ctx_) < ggml_tensor_overhead()) return nullptr;  // full: parts serve
    ggml_tensor * f = ggml_new_tensor_2d(fused_ctx_, first->type, first->ne[0], rows);
    ggml_set_name(f, name.c_str());
    const char * base = (const char *) ggml_backend_buffer_get_base(first->buffer);
    if ((const char *) first->data + ggml_backend_buffer_get_alloc_size(first->buffer, f) >
        base + ggml_backend_buffer_get_size(first->buffer)) {
        return nullptr;
    }
    if (ggml_backend_tensor_alloc(first->buffer, f, first->data) != GGML_STATUS_SUCCESS) return nullptr;
    return fused_[name] = f;
}

std::vector<std::string> GgufModel::fused_names() const {
    std::vector<std::string> out;
    for (const auto & [name, t] : fused_) {
        if (t != nullptr) out.push_back(name);
    }
    std::sort(out.begin(), out.end());
    return out;
}

ggml_tensor * GgufModel::get(const std::string & name, const std::vector<int64_t> & numpy_shape) const {
    ggml_tensor * t = get(name);
    const auto got = numpy_shape_of(t);
    bool ok = got.size() == numpy_shape.size();
    for (size_t i = 0; ok && i < got.size(); ++i) ok = got[i] == numpy_shape[i];
    if (!ok) fail("tensor '" + name + "' has shape " + shape_str(got) + ", expected " + shape_str(numpy_shape));
    return t;
}

const uint8_t * GgufModel::host_data(const std::string & name) const {
    const int64_t id = gguf_find_tensor(gguf_, name.c_str());
    if (id < 0) fail("missing tensor '" + name + "'");
    return map_ + gguf_get_data_offset(gguf_) + gguf_get_tensor_offset(gguf_, id);
}

bool GgufModel::has_key(const std::string & key) const { return gguf_find_key(gguf_, key.c_str()) >= 0; }

std::string GgufModel::get_str(const std::string & key) const {
    const int64_t id = gguf_find_key(gguf_, key.c_str());
    if (id < 0) fail("missing metadata key '" + key + "'");
    if (gguf_get_kv_type(gguf_, id) != GGUF_TYPE_STRING) fail("metadata key '" + key + "' is not a string");
    return gguf_get_val_str(gguf_, id);
}

std::vector<uint8_t> GgufModel::get_bytes(const std::string & key) const {
    const int64_t id = gguf_find_key(gguf_, key.c_str());
    if (id < 0) fail("missing metadata key '" + key + "'");
    if (gguf_get_kv_type(gguf_, id) != GGUF_TYPE_ARRAY ||
        (gguf_get_arr_type(gguf_, id) != GGUF_TYPE_UINT8 && gguf_get_arr_type(gguf_, id) != GGUF_TYPE_INT8)) {
        fail("metadata key '" + key + "' is not a byte array");
    }
    const auto * p = (const uint8_t *) gguf_get_arr_data(gguf_, id);
    return std::vector<uint8_t>(p, p + gguf_get_arr_n(gguf_, id));
}

int64_t GgufModel::get_int(const std::string & key) const {
    const int64_t id = gguf_find_key(gguf_, key.c_str());
    if (id < 0) fail("missing metadata key '" + key + "'");
    switch (gguf_get_kv_type(gguf_, id)) {
        case GGUF_TYPE_UINT8: return gguf_get_val_u8(gguf_, id);
        case GGUF_TYPE_INT8: return gguf_get_val_i8(gguf_, id);
        case GGUF_TYPE_UINT16: return gguf_get_val_u16(gguf_, id);
        case GGUF_TYPE_INT16: return gguf_get_val_i16(gguf_, id);
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(gguf_, id);
        case GGUF_TYPE_INT32: return gguf_get_val_i32(gguf_, id);
        case GGUF_TYPE_UINT64: return (int64_t) gguf_get_val_u64(gguf_, id);
        case GGUF_TYPE_INT64: return gguf_get_val_i64(gguf_, id);
        default: fail("metadata key '" + key + "' is not an integer");
    }
}

}  // namespace actquant
