// models.h — registration of the per-family policy graphs (one file per family in this folder).
#pragma once

#include <pybind11/pybind11.h>

namespace actquant {
// Adds each family's runtime class to the module. Defined in models/registry.cpp.
void register_models(pybind11::module_ & m);
}  // namespace actquant
