// registry.cpp — Python bindings of the per-family runtimes.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "errors.h"
#include "models.h"
#include "models/openvla_oft.h"
#include "models/pi05.h"

namespace py = pybind11;

namespace actquant {

namespace {

template <typename T>
void set_from(const py::dict & d, const char * key, T & field) {
    if (d.contains(key)) field = d[key].cast<T>();
}

pi05_hparams pi05_hparams_from(const py::dict & d) {
    pi05_hparams h = pi05_default_hparams();
    set_from(d, "image_size", h.image_size);
    set_from(d, "patch_size", h.patch_size);
    set_from(d, "vision_width", h.v_width);
    set_from(d, "vision_depth", h.v_depth);
    set_from(d, "vision_mlp", h.v_mlp);
    set_from(d, "vision_heads", h.v_heads);
    set_from(d, "vision_ln_eps", h.v_ln_eps);
    set_from(d, "lm_width", h.lm_width);
    set_from(d, "lm_depth", h.depth);
    set_from(d, "num_heads", h.n_heads);
    set_from(d, "num_kv_heads", h.n_kv_heads);
    set_from(d, "head_dim", h.head_dim);
    set_from(d, "lm_mlp", h.lm_mlp);
    set_from(d, "vocab_size", h.vocab);
    set_from(d, "rms_eps", h.rms_eps);
    set_from(d, "rope_theta", h.rope_theta);
    set_from(d, "embed_scale", h.embed_scale);
    set_from(d, "expert_width", h.ex_width);
    set_from(d, "expert_mlp", h.ex_mlp);
    set_from(d, "action_dim", h.action_dim);
    set_from(d, "action_horizon", h.horizon);
    set_from(d, "max_token_len", h.max_tokens);
    set_from(d, "num_steps", h.num_steps);
    set_from(d, "num_cameras", h.n_cameras);
    set_from(d, "time_min_period", h.t_min_period);
    set_from(d, "time_max_period", h.t_max_period);
    set_from(d, "mask_value", h.mask_value);
    return h;
}

template <typename T>
const T * checked(const py::array_t<T, py::array::c_style | py::array::forcecast> & a, std::vector<int64_t> shape,
                  const char * what) {
    bool ok = a.ndim() == (py::ssize_t) shape.size();
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
    if (!ok) {
        std::string want = "[", got = "[";
        for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
        for (py::ssize_t i = 0; i < a.ndim(); ++i) got += (i ? ", " : "") + std::to_string(a.shape(i));
        throw Error(std::string("pi05: ") + what + " must have shape " + want + "], got " + got + "]");
    }
    return a.data();
}

oft_hparams oft_hparams_from(const py::dict & d) {
    oft_hparams h = oft_default_hparams();
    set_from(d, "image_size", h.image_size);
    set_from(d, "patch_size", h.patch_size);
    set_from(d, "num_images", h.n_images);
    set_from(d, "dino_width", h.d_width);
    set_from(d, "dino_depth", h.d_depth);
    set_from(d, "dino_heads", h.d_heads);
    set_from(d, "dino_mlp", h.d_mlp);
    set_from(d, "dino_registers", h.d_registers);
    set_from(d, "siglip_width", h.s_width);
    set_from(d, "siglip_depth", h.s_depth);
    set_from(d, "siglip_heads", h.s_heads);
    set_from(d, "siglip_mlp", h.s_mlp);
    set_from(d, "vit_ln_eps", h.vit_ln_eps);
    set_from(d, "siglip_gelu_tanh", h.siglip_gelu_tanh);
    set_from(d, "use_film", h.use_film);
    set_from(d, "use_proprio", h.use_proprio);
    set_from(d, "projector_hidden", h.proj_hidden);
    set_from(d, "lm_width", h.lm_width);
    set_from(d, "lm_depth", h.depth);
    set_from(d, "num_heads", h.n_heads);
    set_from(d, "num_kv_heads", h.n_kv_heads);
    set_from(d, "lm_mlp", h.lm_mlp);
    set_from(d, "vocab_size", h.vocab);
    set_from(d, "rms_eps", h.rms_eps);
    set_from(d, "rope_theta", h.rope_theta);
    set_from(d, "action_dim", h.action_dim);
    set_from(d, "chunk", h.chunk);
    set_from(d, "proprio_dim", h.proprio_dim);
    set_from(d, "head_hidden", h.head_hidden);
    set_from(d, "head_blocks", h.head_blocks);
    set_from(d, "head_ln_eps", h.head_ln_eps);
    return h;
}

// Like checked() with the family named in the message.
template <typename T>
const T * checked_for(const char * family, const py::array_t<T, py::array::c_style | py::array::forcecast> & a,
                      std::vector<int64_t> shape, const char * what) {
    bool ok = a.ndim() == (py::ssize_t) shape.size();
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
    if (!ok) {
        std::string want = "[", got = "[";
        for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
        for (py::ssize_t i = 0; i < a.ndim(); ++i) got += (i ? ", " : "") + std::to_string(a.shape(i));
        throw Error(std::string(family) + ": " + what + " must have shape " + want + "], got " + got + "]");
    }
    return a.data();
}

void register_openvla_oft(py::module_ & m) {
    py::class_<OftRuntime, std::shared_ptr<OftRuntime>>(m, "OftRuntime")
        .def(py::init([](const std::string & path, const py::dict & hparams, int n_threads, const std::string & device,
                         bool repack) {
                 backend_params bp = backend_default_params();
                 bp.n_threads = n_threads;
                 bp.device = device;
                 bp.repack = repack;
                 return std::make_shared<OftRuntime>(path, oft_hparams_from(hparams), bp);
             }),
             py::arg("path"), py::arg("hparams"), py::arg("n_threads") = 2, py::arg("device") = "cpu",
             py::arg("repack") = true)
        .def_property_readonly("backend", [](const OftRuntime & r) { return r.backend().description(); })
        .def_property_readonly("weights_nbytes", [](const OftRuntime & r) { return r.model().weights_nbytes(); })
        .def_property_readonly("fused_weights", [](const OftRuntime & r) { return r.model().fused_names(); })
        .def_property_readonly("host_resident", [](const OftRuntime & r) { return r.model().host_resident(); })
        .def(
            "infer",
            [](OftRuntime & self, py::array_t<float, py::array::c_style | py::array::forcecast> images,
               py::array_t<float, py::array::c_style | py::array::forcecast> proprio,
               py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens, std::vector<std::string> collect) {
                const auto & h = self.hparams();
                oft_inputs in;
                in.images = checked_for("openvla_oft", images, {h.n_images, 6, h.image_size, h.image_size}, "images");
                in.proprio = checked_for("openvla_oft", proprio, {h.proprio_dim}, "proprio");
                if (tokens.ndim() != 1) throw Error("openvla_oft: tokens must be a 1-D array of ids");
                in.tokens = tokens.data();
                in.n_tokens = (int) tokens.shape(0);
                oft_outputs out;
                {
                    py::gil_scoped_release release;
                    out = self.infer(in, collect);
                }
                py::array_t<float> actions({(py::ssize_t) h.chunk, (py::ssize_t) h.action_dim});
                std::copy(out.actions.begin(), out.actions.end(), actions.mutable_data());
                py::dict inter;
                for (auto & [name, data] : out.intermediates) {
                    std::vector<py::ssize_t> shape(out.shapes[name].begin(), out.shapes[name].end());
                    py::array_t<float> a(shape);
                    std::copy(data.begin(), data.end(), a.mutable_data());
                    inter[py::str(name)] = a;
                }
                py::dict timing;
                for (auto & [k, v] : out.timing_ms) timing[py::str(k)] = v;
                return py::make_tuple(actions, timing, inter);
            },
            py::arg("images"), py::arg("proprio"), py::arg("tokens"), py::arg("collect") = std::vector<std::string>{});
}

}  // namespace

void register_models(py::module_ & m) {
    register_openvla_oft(m);
    py::class_<Pi05Runtime, std::shared_ptr<Pi05Runtime>>(m, "Pi05Runtime")
        .def(py::init([](const std::string & path, const py::dict & hparams, int n_threads, const std::string & device,
                         bool repack) {
                 backend_params bp = backend_default_params();
                 bp.n_threads = n_threads;
                 bp.device = device;
                 bp.repack = repack;
                 return std::make_shared<Pi05Runtime>(path, pi05_hparams_from(hparams), bp);
             }),
             py::arg("path"), py::arg("hparams"), py::arg("n_threads") = 2, py::arg("device") = "cpu",
             py::arg("repack") = true)
        .def_property_readonly("backend", [](const Pi05Runtime & r) { return r.backend().description(); })
        .def_property_readonly("weights_nbytes", [](const Pi05Runtime & r) { return r.model().weights_nbytes(); })
        .def_property_readonly("fused_weights", [](const Pi05Runtime & r) { return r.model().fused_names(); })
        .def_property_readonly("host_resident", [](const Pi05Runtime & r) { return r.model().host_resident(); })
        .def_property("stage_timing", &Pi05Runtime::stage_timing, &Pi05Runtime::set_stage_timing,
                      "per-stage timing (vision / prefix / denoise); off runs the graph in one piece")
        .def_property("op_profile", &Pi05Runtime::op_profile, &Pi05Runtime::set_op_profile,
                      "per-op profile in each call's timing (op:<OP> ms, op_n:<OP> nodes); one node at a time")
        .def("graph_stats", &Pi05Runtime::graph_stats,
             "op counts of the cached graph (after a call without intermediates; empty before)")
        .def(
            "infer",
            [](Pi05Runtime & self, py::array_t<float, py::array::c_style | py::array::forcecast> images,
               py::array_t<uint8_t, py::array::c_style | py::array::forcecast> image_mask,
               py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
               py::array_t<uint8_t, py::array::c_style | py::array::forcecast> token_mask,
               py::array_t<float, py::array::c_style | py::array::forcecast> noise, std::vector<std::string> collect) {
                const auto & h = self.hparams();
                pi05_inputs in;
                in.images = checked(images, {h.n_cameras, 3, h.image_size, h.image_size}, "images");
                in.image_mask = checked(image_mask, {h.n_cameras}, "image_mask");
                in.tokens = checked(tokens, {h.max_tokens}, "tokens");
                in.token_mask = checked(token_mask, {h.max_tokens}, "token_mask");
                in.noise = checked(noise, {h.horizon, h.action_dim}, "noise");
                pi05_outputs out;
                {
                    py::gil_scoped_release release;
                    out = self.infer(in, collect);
                }
                py::array_t<float> actions({(py::ssize_t) h.horizon, (py::ssize_t) h.action_dim});
                std::copy(out.actions.begin(), out.actions.end(), actions.mutable_data());
                py::dict inter;
                for (auto & [name, data] : out.intermediates) {
                    std::vector<py::ssize_t> shape(out.shapes[name].begin(), out.shapes[name].end());
                    py::array_t<float> a(shape);
                    std::copy(data.begin(), data.end(), a.mutable_data());
                    inter[py::str(name)] = a;
                }
                py::dict timing;
                for (auto & [k, v] : out.timing_ms) timing[py::str(k)] = v;
                return py::make_tuple(actions, timing, inter);
            },
            py::arg("images"), py::arg("image_mask"), py::arg("tokens"), py::arg("token_mask"), py::arg("noise"),
            py::arg("collect") = std::vector<std::string>{});
}

}  // namespace actquant
