#include "quant-ops.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <sstream>
#include <thread>

#include "errors.h"

namespace actquant {

const std::vector<ggml_type> & supported_types() {
    static const std::vector<ggml_type> types = {
        GGML_TYPE_F32,    GGML_TYPE_F16,     GGML_TYPE_BF16,    GGML_TYPE_Q8_0,  GGML_TYPE_Q6_K,  GGML_TYPE_Q5_K,
        GGML_TYPE_Q4_K,   GGML_TYPE_IQ4_XS,  GGML_TYPE_Q3_K,    GGML_TYPE_IQ3_S, GGML_TYPE_IQ3_XXS, GGML_TYPE_Q2_K,
        GGML_TYPE_IQ2_S,  GGML_TYPE_IQ2_XS,  GGML_TYPE_IQ2_XXS, GGML_TYPE_IQ1_M, GGML_TYPE_IQ1_S,
    };
    return types;
}

static std::string lower(std::string s) {
    for (auto & c : s) c = (char) std::tolower((unsigned char) c);
    return s;
}

ggml_type type_from_name(const std::string & name) {
    const std::string want = lower(name);
    for (ggml_type t : supported_types()) {
        if (lower(ggml_type_name(t)) == want) return t;
    }
    std::ostringstream msg;
    msg << "unsupported GGML type '" << name << "'; supported:";
    for (ggml_type t : supported_types()) msg << ' ' << ggml_type_name(t);
    throw Error(msg.str());
}

type_traits_info type_info(ggml_type type) {
    type_traits_info info;
    info.name = ggml_type_name(type);
    info.type = type;
    info.block_size = ggml_blck_size(type);
    info.bytes_per_block = ggml_type_size(type);
    info.bpw = 8.0 * (double) info.bytes_per_block / (double) info.block_size;
    info.is_quantized = ggml_is_quantized(type);
    info.requires_importance = ggml_quantize_requires_imatrix(type);
    return info;
}

size_t tensor_nbytes(ggml_type type, int64_t rows, int64_t cols, const std::string & what) {
    if (rows <= 0 || cols <= 0) {
        std::ostringstream msg;
        msg << what << ": shape [" << rows << ", " << cols << "] must be positive";
        throw Error(msg.str());
    }
    const int64_t bs = ggml_blck_size(type);
    if (cols % bs != 0) {
        std::ostringstream msg;
        msg << what << ": shape [" << rows << ", " << cols << "] cannot be stored as " << ggml_type_name(type)
            << ": row length " << cols << " is not a multiple of its block size " << bs;
        throw Error(msg.str());
    }
    return (size_t) rows * ggml_row_size(type, cols);
}

void quantize_rows(ggml_type type, const float * W, int64_t rows, int64_t cols, const float * importance,
                   int64_t imp_rows, uint8_t * dst, int n_threads, const std::string & what) {
    const size_t row_bytes = tensor_nbytes(type, rows, cols, what) / (size_t) rows;
    if (ggml_quantize_requires_imatrix(type) && importance == nullptr) {
        throw Error(what + ": GGML type " + ggml_type_name(type) +
                    " requires an importance vector (imatrix); pass importance=[cols] or [rows, cols]");
    }
    if (importance != nullptr && imp_rows != 1 && imp_rows != rows) {
        std::ostringstream msg;
        msg << what << ": importance has " << imp_rows << " rows; expected 1 ([cols]) or " << rows << " ([rows, cols])";
        throw Error(msg.str());
    }
    // GGML's searches assume finite input; a NaN would silently poison scales or trip an assert.
    const int64_t n = rows * cols;
    for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(W[i])) {
            std::ostringstream msg;
            msg << what << ": weight has a non-finite value at row " << i / cols << ", column " << i % cols;
            throw Error(msg.str());
        }
    }
    if (importance != nullptr) {
        const int64_t ni = imp_rows * cols;
        for (int64_t i = 0; i < ni; ++i) {
            if (!std::isfinite(importance[i]) || importance[i] < 0.0f) {
                std::ostringstream msg;
                msg << what << ": importance must be finite and >= 0; got " << importance[i] << " at index " << i;
                throw Error(msg.str());
            }
        }
    }
    ggml_quantize_init(type);  // grids for IQ types; done once here so worker threads only read them

    const bool per_row = importance != nullptr && imp_rows == rows && rows > 1;
    auto work = [&](int64_t r0, int64_t r1) {
        if (per_row) {
            for (int64_t r = r0; r < r1; ++r) {
                ggml_quantize_chunk(type, W + r * cols, dst + r * row_bytes, 0, 1, cols, importance + r * cols);
            }
        } else {
            ggml_quantize_chunk(type, W + r0 * cols, dst + r0 * row_bytes, 0, r1 - r0, cols, importance);
        }
    };
    n_threads = std::max(1, std::min<int>(n_threads, (int) rows));
    if (n_threads == 1) {
        work(0, rows);
        return;
    }
    std::vector<std::thread> pool;
    const int64_t per = (rows + n_threads - 1) / n_threads;
    for (int t = 0; t < n_threads; ++t) {
        const int64_t r0 = t * per, r1 = std::min(rows, r0 + per);
        if (r0 < r1) pool.emplace_back(work, r0, r1);
    }
    for (auto & th : pool) th.join();
}

void dequantize_rows(ggml_type type, const uint8_t * src, size_t nbytes, int64_t rows, int64_t cols, float * out,
                     const std::string & what) {
    const size_t want = tensor_nbytes(type, rows, cols, what);
    if (nbytes != want) {
        std::ostringstream msg;
        msg << what << ": " << nbytes << " bytes do not hold a [" << rows << ", " << cols << "] "
            << ggml_type_name(type) << " tensor (" << want << " bytes expected)";
        throw Error(msg.str());
    }
    if (type == GGML_TYPE_F32) {
        std::memcpy(out, src, want);
        return;
    }
    const auto * traits = ggml_get_type_traits(type);
    if (traits->to_float == nullptr) throw Error(what + ": no dequantizer for " + ggml_type_name(type));
    const size_t row_bytes = want / (size_t) rows;
    for (int64_t r = 0; r < rows; ++r) traits->to_float(src + r * row_bytes, out + r * cols, cols);
}

}  // namespace actquant
