"""RTDE v2 wire format: message framing, variable type table, recipe packing.

Every message is ``uint16 size (including the 3-byte header) | uint8 type | payload``, big-endian.
Recipes (``O`` outputs, ``I`` inputs) are comma lists of variable names; the controller answers with a
recipe id (uint8, counted from 1 per connection, outputs and inputs separately) and the comma list of
the variables' types (``NOT_FOUND`` for unknown names).  Data packages (``U``) are the recipe id followed
by the values packed in recipe order with the sizes below.

The type table follows the "Real-Time Data Exchange (RTDE) Guide" of Universal Robots: outputs
(controller -> client) and inputs (client -> controller).  Both sides of the wire must agree on the
sizes, so ``VECTOR6D`` is 6 doubles, ``VECTOR3D`` 3 doubles, ``VECTOR6INT32`` 6 int32 and so on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct(">HB")
HEADER_SIZE = HEADER.size  # 3

# RTDE type name -> struct format (big-endian, no header).
TYPE_FORMATS: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT32": "I",
    "UINT64": "Q",
    "INT32": "i",
    "DOUBLE": "d",
    "VECTOR3D": "3d",
    "VECTOR6D": "6d",
    "VECTOR6INT32": "6i",
    "VECTOR6UINT32": "6I",
}
# Number of values a type carries (vectors are flattened when packing).
TYPE_COUNTS = {t: (int(f[:-1]) if f[:-1].isdigit() else 1) for t, f in TYPE_FORMATS.items()}

N_REGISTERS = 48  # int / double registers 0..47 (24..47 = the "upper range")

OUTPUT_TYPES: dict[str, str] = {
    "timestamp": "DOUBLE",
    "target_q": "VECTOR6D",
    "target_qd": "VECTOR6D",
    "target_qdd": "VECTOR6D",
    "target_current": "VECTOR6D",
    "target_moment": "VECTOR6D",
    "actual_q": "VECTOR6D",
    "actual_qd": "VECTOR6D",
    "actual_qdd": "VECTOR6D",
    "actual_current": "VECTOR6D",
    "actual_current_window": "VECTOR6D",
    "actual_moment": "VECTOR6D",
    "joint_control_output": "VECTOR6D",
    "actual_TCP_pose": "VECTOR6D",
    "actual_TCP_speed": "VECTOR6D",
    "actual_TCP_force": "VECTOR6D",
    "target_TCP_pose": "VECTOR6D",
    "target_TCP_speed": "VECTOR6D",
    "actual_digital_input_bits": "UINT64",
    "joint_temperatures": "VECTOR6D",
    "actual_execution_time": "DOUBLE",
    "robot_mode": "INT32",
    "joint_mode": "VECTOR6INT32",
    "safety_mode": "INT32",
    "safety_status": "INT32",
    "actual_tool_accelerometer": "VECTOR3D",
    "speed_scaling": "DOUBLE",
    "target_speed_fraction": "DOUBLE",
    "actual_momentum": "DOUBLE",
    "actual_main_voltage": "DOUBLE",
    "actual_robot_voltage": "DOUBLE",
    "actual_robot_current": "DOUBLE",
    "actual_joint_voltage": "VECTOR6D",
    "actual_digital_output_bits": "UINT64",
    "runtime_state": "UINT32",
    "elbow_position": "VECTOR3D",
    "elbow_velocity": "VECTOR3D",
    "robot_status_bits": "UINT32",
    "safety_status_bits": "UINT32",
    "analog_io_types": "UINT32",
    "standard_analog_input0": "DOUBLE",
    "standard_analog_input1": "DOUBLE",
    "standard_analog_output0": "DOUBLE",
    "standard_analog_output1": "DOUBLE",
    "io_current": "DOUBLE",
    "euromap67_input_bits": "UINT32",
    "euromap67_output_bits": "UINT32",
    "euromap67_24V_voltage": "DOUBLE",
    "euromap67_24V_current": "DOUBLE",
    "tool_mode": "UINT32",
    "tool_analog_input_types": "UINT32",
    "tool_analog_input0": "DOUBLE",
    "tool_analog_input1": "DOUBLE",
    "tool_output_voltage": "INT32",
    "tool_output_current": "DOUBLE",
    "tool_temperature": "DOUBLE",
    "tcp_force_scalar": "DOUBLE",
    "output_bit_registers0_to_31": "UINT32",
    "output_bit_registers32_to_63": "UINT32",
    "input_bit_registers0_to_31": "UINT32",
    "input_bit_registers32_to_63": "UINT32",
    "tool_output_mode": "UINT8",
    "tool_digital_output0_mode": "UINT8",
    "tool_digital_output1_mode": "UINT8",
    "payload": "DOUBLE",
    "payload_cog": "VECTOR3D",
    "payload_inertia": "VECTOR6D",
    "script_control_line": "UINT32",
    "ft_raw_wrench": "VECTOR6D",
}
for _i in range(N_REGISTERS):
    OUTPUT_TYPES[f"output_int_register_{_i}"] = "INT32"
    OUTPUT_TYPES[f"output_double_register_{_i}"] = "DOUBLE"
    OUTPUT_TYPES[f"input_int_register_{_i}"] = "INT32"
    OUTPUT_TYPES[f"input_double_register_{_i}"] = "DOUBLE"
for _i in range(64, 128):
    OUTPUT_TYPES[f"output_bit_register_{_i}"] = "BOOL"
    OUTPUT_TYPES[f"input_bit_register_{_i}"] = "BOOL"

INPUT_TYPES: dict[str, str] = {
    "speed_slider_mask": "UINT32",
    "speed_slider_fraction": "DOUBLE",
    "standard_digital_output_mask": "UINT8",
    "standard_digital_output": "UINT8",
    "configurable_digital_output_mask": "UINT8",
    "configurable_digital_output": "UINT8",
    "tool_digital_output_mask": "UINT8",
    "tool_digital_output": "UINT8",
    "standard_analog_output_mask": "UINT8",
    "standard_analog_output_type": "UINT8",
    "standard_analog_output_0": "DOUBLE",
    "standard_analog_output_1": "DOUBLE",
    "input_bit_registers0_to_31": "UINT32",
    "input_bit_registers32_to_63": "UINT32",
    "external_force_torque": "VECTOR6D",
}
for _i in range(N_REGISTERS):
    INPUT_TYPES[f"input_int_register_{_i}"] = "INT32"
    INPUT_TYPES[f"input_double_register_{_i}"] = "DOUBLE"
for _i in range(64, 128):
    INPUT_TYPES[f"input_bit_register_{_i}"] = "BOOL"

NOT_FOUND = "NOT_FOUND"


class ProtocolError(ValueError):
    """A malformed RTDE message (the server closes that connection)."""


def frame(msg_type: int, payload: bytes = b"") -> bytes:
    """One RTDE message: header (size incl. header, type) + payload."""
    size = HEADER_SIZE + len(payload)
    if size > 0xFFFF:
        raise ProtocolError(f"RTDE message of {size} bytes exceeds the uint16 size field")
    return HEADER.pack(size, msg_type) + payload


def split_names(payload: bytes) -> list[str]:
    """A recipe's comma list (trailing comma and whitespace tolerated) -> variable names."""
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"recipe is not ASCII: {payload[:40]!r}") from e
    return [n.strip() for n in text.split(",") if n.strip()]


@dataclass(frozen=True)
class Recipe:
    """A set-up recipe: id, variable names, their RTDE types and the packed struct (None if unusable).

    ``usable`` is False when any name was NOT_FOUND; such a recipe is answered but never streamed or
    accepted.
    """

    recipe_id: int
    names: tuple[str, ...]
    types: tuple[str, ...]
    codec: struct.Struct | None

    @property
    def usable(self) -> bool:
        return self.codec is not None

    def types_answer(self) -> bytes:
        return ",".join(self.types).encode("ascii")


def make_recipe(recipe_id: int, names: list[str], table: dict[str, str]) -> Recipe:
    """Build a recipe from variable names and a type table (``OUTPUT_TYPES`` or ``INPUT_TYPES``)."""
    types = tuple(table.get(n, NOT_FOUND) for n in names)
    codec = None
    if NOT_FOUND not in types and names:
        codec = struct.Struct(">B" + "".join(TYPE_FORMATS[t] for t in types))
    return Recipe(recipe_id=recipe_id, names=tuple(names), types=types, codec=codec)


def unpack_inputs(recipe: Recipe, body: bytes) -> dict[str, object]:
    """Decode an input data package body (recipe id byte included) -> name -> value (vectors as tuples)."""
    if recipe.codec is None:
        raise ProtocolError(f"input recipe {recipe.recipe_id} has unknown variables: {recipe.names}")
    if len(body) != recipe.codec.size:
        raise ProtocolError(
            f"input package for recipe {recipe.recipe_id} has {len(body)} bytes, expected {recipe.codec.size} "
            f"for {recipe.names}"
        )
    flat = recipe.codec.unpack(body)[1:]
    out: dict[str, object] = {}
    i = 0
    for name, t in zip(recipe.names, recipe.types):
        n = TYPE_COUNTS[t]
        out[name] = flat[i] if n == 1 else tuple(flat[i : i + n])
        i += n
    return out
