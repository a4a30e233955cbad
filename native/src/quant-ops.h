// quant-ops.h — GGML quantize / dequantize and type traits, exactly as GGML computes them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ggml.h"

namespace actquant {

struct type_traits_info {
    std::string name;
    ggml_type type;
    int64_t block_size;       // elements per block
    size_t bytes_per_block;   // bytes per block
    double bpw;               // 8 * bytes_per_block / block_size (block overhead included)
    bool is_quantized;
    bool requires_importance;  // ggml_quantize_requires_imatrix
};

// The types this project supports (issue #2 list), in menu order from wide to narrow.
const std::vector<ggml_type> & supported_types();
ggml_type type_from_name(const std::string & name);  // case-insensitive; throws Error for unknown/unsupported
type_traits_info type_info(ggml_type type);

// Size in bytes of a [rows, cols] tensor of `type` (throws Error when cols is not a multiple of the block).
size_t tensor_nbytes(ggml_type type, int64_t rows, int64_t cols, const std::string & what);

// Quantize W [rows, cols] (row-major f32) into dst (tensor_nbytes bytes) with ggml_quantize_chunk.
// importance: nullptr, or [cols] (shared by all rows), or [rows, cols] (row r uses its own row).
// imp_rows is 0 (none), 1 ([cols]) or rows ([rows, cols]). Work is split over n_threads row ranges.
void quantize_rows(ggml_type type, const float * W, int64_t rows, int64_t cols, const float * importance,
                   int64_t imp_rows, uint8_t * dst, int n_threads, const std::string & what);

// Dequantize `nbytes` bytes of a [rows, cols] tensor of `type` into out (rows*cols f32).
void dequantize_rows(ggml_type type, const uint8_t * src, size_t nbytes, int64_t rows, int64_t cols, float * out,
                     const std::string & what);

}  // namespace actquant
