// bindings.cpp — the private module actquant_core._native. Python code uses the typed facade
// actquant_core.native, never this module directly.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "backend.h"
#include "errors.h"
#include "gguf-model.h"
#include "graph-exec.h"
#include "models/models.h"
#include "quant-ops.h"

namespace py = pybind11;
using namespace actquant;

namespace {

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;

py::dict traits_dict(ggml_type t) {
    const auto i = type_info(t);
    py::dict d;
    d["name"] = i.name;
    d["ggml_type"] = (int) i.type;
    d["block_size"] = i.block_size;
    d["bytes_per_block"] = i.bytes_per_block;
    d["bpw"] = i.bpw;
    d["is_quantized"] = i.is_quantized;
    d["requires_importance"] = i.requires_importance;
    return d;
}

py::bytes quantize_py(f32_array W, const std::string & type_name, py::object importance, int n_threads,
                      const std::string & name) {
    const ggml_type type = type_from_name(type_name);
    if (W.ndim() != 2) throw Error(name + ": weight must be 2-D [rows, cols], got " + std::to_string(W.ndim()) + "-D");
    const int64_t rows = W.shape(0), cols = W.shape(1);
    const size_t nbytes = tensor_nbytes(type, rows, cols, name);
    f32_array imp;
    int64_t imp_rows = 0;
    if (!importance.is_none()) {
        imp = f32_array::ensure(importance);
        if (!imp) throw Error(name + ": importance must be a float array");
        if (imp.ndim() == 1 && imp.shape(0) == cols) {
            imp_rows = 1;
        } else if (imp.ndim() == 2 && imp.shape(0) == rows && imp.shape(1) == cols) {
            imp_rows = rows;
        } else {
            std::string got = "[";
            for (py::ssize_t i = 0; i < imp.ndim(); ++i) got += (i ? ", " : "") + std::to_string(imp.shape(i));
            throw Error(name + ": importance shape " + got + "] does not match weight [" + std::to_string(rows) +
                        ", " + std::to_string(cols) + "]; expected [cols] or [rows, cols]");
        }
    }
    std::string out(nbytes, '\0');
    {
        py::gil_scoped_release release;
        quantize_rows(type, W.data(), rows, cols, imp_rows ? imp.data() : nullptr, imp_rows, (uint8_t *) out.data(),
                      n_threads, name);
    }
    return py::bytes(out);
}

f32_array dequantize_py(py::bytes data, const std::string & type_name, int64_t rows, int64_t cols,
                        const std::string & name) {
    const ggml_type type = type_from_name(type_name);
    std::string_view view = data;
    f32_array out({rows, cols});
    dequantize_rows(type, (const uint8_t *) view.data(), view.size(), rows, cols, out.mutable_data(), name);
    return out;
}

py::object metadata_value(const gguf_context * g, int64_t id) {
    const auto t = gguf_get_kv_type(g, id);
    switch (t) {
        case GGUF_TYPE_UINT8: return py::int_(gguf_get_val_u8(g, id));
        case GGUF_TYPE_INT8: return py::int_(gguf_get_val_i8(g, id));
        case GGUF_TYPE_UINT16: return py::int_(gguf_get_val_u16(g, id));
        case GGUF_TYPE_INT16: return py::int_(gguf_get_val_i16(g, id));
        case GGUF_TYPE_UINT32: return py::int_(gguf_get_val_u32(g, id));
        case GGUF_TYPE_INT32: return py::int_(gguf_get_val_i32(g, id));
        case GGUF_TYPE_UINT64: return py::int_(gguf_get_val_u64(g, id));
        case GGUF_TYPE_INT64: return py::int_(gguf_get_val_i64(g, id));
        case GGUF_TYPE_FLOAT32: return py::float_(gguf_get_val_f32(g, id));
        case GGUF_TYPE_FLOAT64: return py::float_(gguf_get_val_f64(g, id));
        case GGUF_TYPE_BOOL: return py::bool_(gguf_get_val_bool(g, id));
        case GGUF_TYPE_STRING: return py::str(gguf_get_val_str(g, id));
        case GGUF_TYPE_ARRAY: {
            const auto at = gguf_get_arr_type(g, id);
            const size_t n = gguf_get_arr_n(g, id);
            if (at == GGUF_TYPE_UINT8 || at == GGUF_TYPE_INT8) {
                return py::bytes((const char *) gguf_get_arr_data(g, id), n);
            }
            py::list out;
            if (at == GGUF_TYPE_STRING) {
                for (size_t i = 0; i < n; ++i) out.append(py::str(gguf_get_arr_str(g, id, i)));
                return out;
            }
            const auto * p = (const uint8_t *) gguf_get_arr_data(g, id);
            for (size_t i = 0; i < n; ++i) {
                switch (at) {
                    case GGUF_TYPE_UINT32: out.append(((const uint32_t *) p)[i]); break;
                    case GGUF_TYPE_INT32: out.append(((const int32_t *) p)[i]); break;
                    case GGUF_TYPE_UINT64: out.append(((const uint64_t *) p)[i]); break;
                    case GGUF_TYPE_INT64: out.append(((const int64_t *) p)[i]); break;
                    case GGUF_TYPE_FLOAT32: out.append(((const float *) p)[i]); break;
                    case GGUF_TYPE_FLOAT64: out.append(((const double *) p)[i]); break;
                    default: return py::none();
                }
            }
            return out;
        }
        default: return py::none();
    }
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "actquant native GGML runtime (private; use actquant_core.native)";
    log_capture_install();

    static py::exception<FileError> gguf_error(m, "GgufError", PyExc_ValueError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const FileError & e) {
            py::set_error(gguf_error, e.what());
        } catch (const Error & e) {
            py::set_error(PyExc_ValueError, e.what());
        }
    });

    m.def("supported_types", [] {
        py::list out;
        for (auto t : supported_types()) out.append(py::str(ggml_type_name(t)));
        return out;
    });
    m.def("type_traits", [](const std::string & name) { return traits_dict(type_from_name(name)); }, py::arg("type"));
    m.def("quantize", &quantize_py, py::arg("W"), py::arg("type"), py::arg("importance") = py::none(),
          py::arg("n_threads") = 1, py::arg("name") = "tensor");
    m.def("dequantize", &dequantize_py, py::arg("data"), py::arg("type"), py::arg("rows"), py::arg("cols"),
          py::arg("name") = "tensor");
    m.def("has_cuda", &backend_has_cuda);
    m.def("cuda_device_count", &backend_cuda_device_count);
    m.def("ggml_version", [] { return std::string("0.15.3"); });

    py::class_<Backend, std::shared_ptr<Backend>>(m, "Backend")
        .def(py::init([](int n_threads, const std::string & device, bool repack) {
                 backend_params p = backend_default_params();
                 p.n_threads = n_threads;
                 p.device = device;
                 p.repack = repack;
                 return std::make_shared<Backend>(p);
             }),
             py::arg("n_threads") = 2, py::arg("device") = "cpu", py::arg("repack") = true)
        .def_property_readonly("repack", [](const Backend & b) { return b.repack_buft() != nullptr; })
        .def_property_readonly("description", &Backend::description)
        .def_property_readonly("is_gpu", &Backend::is_gpu)
        .def_property_readonly("n_threads", &Backend::n_threads);

    py::class_<GgufModel, std::shared_ptr<GgufModel>>(m, "GgufModel")
        .def(py::init([](const std::string & path, std::shared_ptr<Backend> backend) {
                 return std::make_shared<GgufModel>(path, backend.get());
             }),
             py::arg("path"), py::arg("backend") = nullptr, py::keep_alive<1, 3>())
        .def_property_readonly("path", &GgufModel::path)
        .def_property_readonly("file_size", &GgufModel::file_size)
        .def_property_readonly("weights_nbytes", &GgufModel::weights_nbytes)
        .def_property_readonly("n_repacked", &GgufModel::n_repacked)
        .def_property_readonly("repacked_nbytes", &GgufModel::repacked_nbytes)
        .def_property_readonly("host_resident", &GgufModel::host_resident)
        .def("tensor_names", &GgufModel::tensor_names)
        .def("tensor_info",
             [](const GgufModel & self, const std::string & name) {
                 ggml_tensor * t = self.get(name);
                 py::list shape;
                 for (int i = ggml_n_dims(t) - 1; i >= 0; --i) shape.append(t->ne[i]);
                 return py::make_tuple(std::string(ggml_type_name(t->type)), shape, ggml_nbytes(t));
             })
        .def("metadata_keys",
             [](const GgufModel & self) {
                 py::list out;
                 for (int64_t i = 0; i < gguf_get_n_kv(self.meta()); ++i) out.append(gguf_get_key(self.meta(), i));
                 return out;
             })
        .def("metadata", [](const GgufModel & self, const std::string & key) {
            const int64_t id = gguf_find_key(self.meta(), key.c_str());
            if (id < 0) throw FileError("GGUF '" + self.path() + "': missing metadata key '" + key + "'");
            return metadata_value(self.meta(), id);
        });

    m.def(
        "mul_mat",
        [](std::shared_ptr<GgufModel> model, std::shared_ptr<Backend> backend, const std::string & name, f32_array x) {
            if (x.ndim() != 2) throw Error("mul_mat: x must be [batch, cols]");
            const int64_t batch = x.shape(0), cols = x.shape(1);
            std::vector<float> y;
            int64_t rows = 0;
            {
                py::gil_scoped_release release;
                y = mul_mat(*model, *backend, name, x.data(), batch, cols);
                rows = (int64_t) y.size() / batch;
            }
            f32_array out({batch, rows});
            std::copy(y.begin(), y.end(), out.mutable_data());
            return out;
        },
        py::arg("model"), py::arg("backend"), py::arg("name"), py::arg("x"));

    register_models(m);
}
