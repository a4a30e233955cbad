// errors.h — exceptions raised by the native runtime and capture of GGML's log for error messages.
//
// Nothing in native/ may let GGML abort on bad input: inputs are validated first and reported as
// actquant::Error (mapped to Python ValueError) or actquant::FileError (mapped to Python
// actquant_core.native.GgufError).
#pragma once

#include <stdexcept>
#include <string>

namespace actquant {

// Invalid argument (shape, type, value): becomes ValueError in Python.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Unreadable / corrupt / inconsistent file: becomes actquant_core.native.GgufError (an OSError subclass).
struct FileError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Installs a GGML log callback that keeps the last error/warning lines (used to explain why
// gguf_init_from_file returned NULL) and forwards INFO+ to stderr only when ACTQUANT_GGML_LOG=1.
void log_capture_install();
// Returns and clears the captured GGML error text of this thread.
std::string log_capture_take();

}  // namespace actquant
