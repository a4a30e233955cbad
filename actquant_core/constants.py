"""Every spelled-out name of the project, in one place.

Sections: GGUF metadata keys, canonical tensor names per family, checkpoint-key maps, observation and
action keys, ROS topic / parameter names, simulation names.  Other modules import from here; they do
not spell these strings themselves.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------------
# GGUF metadata keys (namespace "actquant.")
# ---------------------------------------------------------------------------------------------------
GGUF_NS = "actquant"
KEY_FAMILY = f"{GGUF_NS}.family"  # str: "pi05" | "openvla_oft" | "test"
KEY_FORMAT_VERSION = f"{GGUF_NS}.format_version"  # u32
KEY_CONFIG_JSON = f"{GGUF_NS}.config_json"  # str: the family config dataclass as JSON
KEY_NORM_STATS_JSON = f"{GGUF_NS}.norm_stats_json"  # str: normalisation statistics as JSON
KEY_TOKENIZER_MODEL = f"{GGUF_NS}.tokenizer.model"  # u8 array: SentencePiece model bytes
KEY_QUANT_PLAN_SUMMARY = f"{GGUF_NS}.quant.plan_summary_json"  # str: plan summary (method, bpw, counts)
KEY_SOURCE = f"{GGUF_NS}.source"  # str: where the weights came from
FORMAT_VERSION = 1

# ---------------------------------------------------------------------------------------------------
# pi05 names (policies/pi05)
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# openvla_oft names (policies/openvla_oft)
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# Robot / RTDE names (robot/)
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# Simulation names (sim/)
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# ROS topic and parameter names (actquant_ros)
# ---------------------------------------------------------------------------------------------------
