"""Parameters: ROS 2 params-file YAML, ``--ros-args`` parsing, typed declaration and validation.

The DDS backend has no rcl to parse its command line, so this module reproduces the parts of ROS 2's
behaviour that our nodes use, so one console entry point works with and without ROS:

- params file: ``{node_name | /node_name | /ns/node_name | /**: {ros__parameters: {...}}}``; nested
  maps are flattened to dotted names (``a: {b: 1}`` -> ``a.b``), as rcl does;
- ``--ros-args [-p|--param name:=value] [--params-file path] [-r|--remap from:=to] ... [--]``;
  values are parsed as YAML (``-p rate:=10`` is an int, ``-p names:="[a, b]"`` a list), as rcl does;
- later sources override earlier ones, in command-line order.

Parameter types follow ROS 2: bool, int, float, str and homogeneous lists of those.  An int given for a
float parameter is accepted (widened); everything else that does not match raises ``ParameterError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from actquant_core import constants as C

__all__ = [
    "ParameterError",
    "ParameterSpec",
    "ParameterStore",
    "RosArgs",
    "parse_ros_args",
    "load_params_file",
    "param_type_of",
    "coerce_param",
    "PARAM_TYPES",
]

PARAM_TYPES = ("bool", "int", "float", "str", "bool_array", "int_array", "float_array", "str_array")
_SCALAR = {"bool": bool, "int": int, "float": float, "str": str}
_PY_TO_TYPE = {bool: "bool", int: "int", float: "float", str: "str"}


class ParameterError(ValueError):
    """A parameter value is missing, of the wrong type, or fails validation."""


def param_type_of(value: Any) -> str:
    """The ROS parameter type name of a default value (one of ``PARAM_TYPES``)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        if not value:
            raise ParameterError("cannot infer the element type of an empty list default; pass type_ (e.g. 'str_array')")
        kinds = {param_type_of(v) for v in value}
        if kinds == {"int", "float"}:
            kinds = {"float"}
        if len(kinds) != 1 or next(iter(kinds)).endswith("_array"):
            raise ParameterError(f"list parameter values must be homogeneous scalars, got {value!r}")
        return f"{next(iter(kinds))}_array"
    raise ParameterError(f"unsupported parameter value {value!r} of type {type(value).__name__}; use {PARAM_TYPES}")


def _coerce_scalar(name: str, value: Any, kind: str) -> Any:
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    want = _SCALAR[kind]
    if kind == "int" and isinstance(value, bool):
        raise ParameterError(f"parameter {name!r}: expected int, got bool {value!r}")
    if not isinstance(value, want):
        raise ParameterError(f"parameter {name!r}: expected {kind}, got {type(value).__name__} {value!r}")
    return value


def coerce_param(name: str, value: Any, kind: str) -> Any:
    """Check / widen ``value`` to parameter type ``kind``; lists become tuples (immutable)."""
    if kind not in PARAM_TYPES:
        raise ParameterError(f"parameter {name!r}: unknown type {kind!r}; use one of {PARAM_TYPES}")
    if kind.endswith("_array"):
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"parameter {name!r}: expected {kind} (a list), got {type(value).__name__} {value!r}")
        elem = kind[: -len("_array")]
        return tuple(_coerce_scalar(f"{name}[{i}]", v, elem) for i, v in enumerate(value))
    return _coerce_scalar(name, value, kind)


def _normalise_type(type_: str | type | None) -> str | None:
    if type_ is None or isinstance(type_, str):
        return type_
    if type_ in _PY_TO_TYPE:
        return _PY_TO_TYPE[type_]
    raise ParameterError(f"type_ must be one of {PARAM_TYPES} or bool/int/float/str, got {type_!r}")


@dataclass(frozen=True)
class ParameterSpec:
    """A declared parameter.

    Attributes:
        name: dotted parameter name.
        type: one of ``PARAM_TYPES``.
        default: default value (None = no default: the value stays None unless overridden).
        description: shown to users (ROS ParameterDescriptor.description).
        validator: ``f(value) -> bool | None``; returning False or raising ValueError rejects the value.
            Not called for None (unset) values.
    """

    name: str
    type: str
    default: Any = None
    description: str = ""
    validator: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ParameterError(f"parameter name must be non-empty without whitespace, got {self.name!r}")
        if self.type not in PARAM_TYPES:
            raise ParameterError(f"parameter {self.name!r}: type {self.type!r} not in {PARAM_TYPES}")

    @classmethod
    def make(
        cls,
        name: str,
        default: Any,
        description: str = "",
        validator: Callable[[Any], Any] | None = None,
        type_: str | type | None = None,
    ) -> ParameterSpec:
        """Build a spec, inferring the type from ``default`` unless ``type_`` is given."""
        kind = _normalise_type(type_)
        if kind is None:
            if default is None:
                raise ParameterError(f"parameter {name!r} has no default; pass type_ so its type is known")
            kind = param_type_of(default)
        if default is not None:
            default = coerce_param(name, default, kind)
        return cls(name=name, type=kind, default=default, description=description, validator=validator)

    def check(self, value: Any) -> Any:
        """Coerce and validate ``value``; returns the stored form or raises ``ParameterError``."""
        if value is None:
            return None
        value = coerce_param(self.name, value, self.type)
        if self.validator is not None:
            try:
                ok = self.validator(value)
            except (ValueError, TypeError) as exc:
                raise ParameterError(f"parameter {self.name!r}={value!r} rejected: {exc}") from exc
            if ok is False:
                desc = f" ({self.description})" if self.description else ""
                raise ParameterError(f"parameter {self.name!r}={value!r} rejected by its validator{desc}")
        return value


class ParameterStore:
    """Declared parameters and their values, fed by overrides (params files, CLI).

    Overrides for names that are never declared are kept (ROS ignores them too) and listed by
    ``undeclared_overrides()`` so a node can warn about typos.
    """

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._specs: dict[str, ParameterSpec] = {}
        self._values: dict[str, Any] = {}

    def declare(self, spec: ParameterSpec, override: Any = None, has_override: bool | None = None) -> Any:
        """Declare ``spec``; its value is the override if one exists, else the default. Returns the value."""
        if spec.name in self._specs:
            raise ParameterError(f"parameter {spec.name!r} declared twice")
        if has_override is None:
            has_override = spec.name in self._overrides
            override = self._overrides.get(spec.name)
        value = spec.check(override if has_override else spec.default)
        self._specs[spec.name] = spec
        self._values[spec.name] = value
        return value

    def get(self, name: str) -> Any:
        if name not in self._specs:
            raise ParameterError(f"parameter {name!r} was not declared; declared: {sorted(self._specs)}")
        return self._values[name]

    def set(self, name: str, value: Any) -> Any:
        if name not in self._specs:
            raise ParameterError(f"parameter {name!r} was not declared; declared: {sorted(self._specs)}")
        checked = self._specs[name].check(value)
        self._values[name] = checked
        return checked

    def spec(self, name: str) -> ParameterSpec:
        if name not in self._specs:
            raise ParameterError(f"parameter {name!r} was not declared")
        return self._specs[name]

    def names(self) -> list[str]:
        return list(self._specs)

    def undeclared_overrides(self) -> list[str]:
        return sorted(set(self._overrides) - set(self._specs))


def _flatten(prefix: str, tree: Mapping[str, Any], out: dict[str, Any]) -> None:
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            _flatten(name, value, out)
        else:
            out[name] = value


def _node_keys(node_name: str, namespace: str) -> list[str]:
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    fq = f"{ns}/{node_name}"
    # order = increasing precedence (ROS applies wildcards first, then exact matches)
    return [C.ROS_PARAM_WILDCARD, node_name, fq.lstrip("/"), fq]


def load_params_file(path: str | Path, node_name: str, namespace: str = "") -> dict[str, Any]:
    """Parameters for ``node_name`` from a ROS 2 params YAML file (flattened dotted names).

    Sections that apply: ``/**``, ``node_name``, ``/node_name`` and ``/ns/node_name``.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParameterError(f"params file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ParameterError(f"params file {str(path)!r} is not valid YAML: {exc}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ParameterError(f"params file {str(path)!r}: top level must be a mapping of node names, got {type(doc).__name__}")
    out: dict[str, Any] = {}
    for key in _node_keys(node_name, namespace):
        section = doc.get(key)
        if section is None:
            continue
        if not isinstance(section, Mapping) or C.ROS_PARAMS_KEY not in section:
            raise ParameterError(f"params file {str(path)!r}: section {key!r} must contain {C.ROS_PARAMS_KEY!r}")
        params = section[C.ROS_PARAMS_KEY] or {}
        if not isinstance(params, Mapping):
            raise ParameterError(f"params file {str(path)!r}: {key}.{C.ROS_PARAMS_KEY} must be a mapping")
        _flatten("", params, out)
    return out


@dataclass(frozen=True)
class RosArgs:
    """What ``--ros-args`` sections of a command line say.

    Attributes:
        sources: ("file", path) and ("param", (name, value)) entries in command-line order.
        remaps: topic remappings from -> to (``__node``/``__ns`` handled separately).
        node_name: ``-r __node:=name`` override, or None.
        namespace: ``-r __ns:=/ns`` override, or None.
        remaining: arguments outside ``--ros-args`` sections (for the node's own argparse).
    """

    sources: tuple[tuple[str, Any], ...] = ()
    remaps: Mapping[str, str] = field(default_factory=dict)
    node_name: str | None = None
    namespace: str | None = None
    remaining: tuple[str, ...] = ()

    def overrides(self, node_name: str, namespace: str = "") -> dict[str, Any]:
        """Merged parameter overrides for a node, later sources winning."""
        out: dict[str, Any] = {}
        for kind, payload in self.sources:
            if kind == "file":
                out.update(load_params_file(payload, node_name, namespace))
            else:
                name, value = payload
                out[name] = value
        return out


def _split_assign(flag: str, text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise ParameterError(f"{flag} expects 'name:=value', got {text!r}")
    return name, value


def parse_ros_args(argv: Sequence[str]) -> RosArgs:
    """Parse the ``--ros-args ... [--]`` sections of ``argv`` (program name excluded or not, both fine)."""
    sources: list[tuple[str, Any]] = []
    remaps: dict[str, str] = {}
    node_name = namespace = None
    remaining: list[str] = []
    i = 0
    in_ros = False
    args = list(argv)
    while i < len(args):
        a = args[i]
        if a == C.ROS_ARGS_FLAG:
            in_ros = True
            i += 1
            continue
        if not in_ros:
            remaining.append(a)
            i += 1
            continue
        if a == "--":
            in_ros = False
            i += 1
            continue

        def value_of(flag: str) -> str:
            if i + 1 >= len(args):
                raise ParameterError(f"--ros-args: {flag} needs a value")
            return args[i + 1]

        if a in ("-p", "--param"):
            name, raw = _split_assign(a, value_of(a))
            try:
                parsed = yaml.safe_load(raw) if raw != "" else ""
            except yaml.YAMLError as exc:
                raise ParameterError(f"--ros-args {a} {name}:={raw!r}: value is not valid YAML: {exc}") from exc
            sources.append(("param", (name, parsed)))
            i += 2
        elif a == "--params-file":
            sources.append(("file", value_of(a)))
            i += 2
        elif a in ("-r", "--remap"):
            src, dst = _split_assign(a, value_of(a))
            if src == "__node" or src == "__name":
                node_name = dst
            elif src == "__ns":
                namespace = dst
            else:
                remaps[src] = dst
            i += 2
        elif a in ("--log-level", "-e", "--enclave"):
            value_of(a)
            i += 2  # accepted, no effect on the DDS backend
        elif a in ("--disable-rosout-logs", "--disable-stdout-logs", "--enable-rosout-logs", "--enable-stdout-logs"):
            i += 1
        else:
            raise ParameterError(f"--ros-args: unsupported argument {a!r} (supported: -p, --params-file, -r, --log-level)")
    return RosArgs(tuple(sources), remaps, node_name, namespace, tuple(remaining))


class StoreBackedParameters:
    """``Node``'s parameter methods over a :class:`ParameterStore` in ``self._params`` (the DDS backend's node
    and the parameter-docs recorder share them)."""

    _params: ParameterStore

    def declare_parameter(
        self,
        name: str,
        default: Any = None,
        description: str = "",
        validator: Callable[[Any], Any] | None = None,
        type_: str | type | None = None,
    ) -> Any:
        return self._params.declare(ParameterSpec.make(name, default, description, validator, type_))

    def get_parameter(self, name: str) -> Any:
        return self._params.get(name)

    def set_parameter(self, name: str, value: Any) -> Any:
        return self._params.set(name, value)

    def parameter_spec(self, name: str) -> ParameterSpec:
        """The declaration (type, default, description) of a parameter."""
        return self._params.spec(name)
