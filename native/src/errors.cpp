#include "errors.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "ggml.h"

namespace actquant {

namespace {
thread_local std::string g_captured;
bool g_verbose = false;

void log_callback(enum ggml_log_level level, const char * text, void * /*user*/) {
    if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
        if (g_captured.size() < 4096) g_captured += text;
    }
    if (g_verbose) std::fputs(text, stderr);
}
}  // namespace

void log_capture_install() {
    static std::once_flag once;
    std::call_once(once, [] {
        const char * env = std::getenv("ACTQUANT_GGML_LOG");
        g_verbose = env != nullptr && env[0] == '1';
        ggml_log_set(log_callback, nullptr);
    });
}

std::string log_capture_take() {
    std::string out;
    out.swap(g_captured);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
}

}  // namespace actquant
