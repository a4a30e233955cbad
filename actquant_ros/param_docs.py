"""Markdown parameter tables of the nodes, generated from what each node declares.

The single source of truth is each config's ``from_node(node)`` (the function the node itself calls at
start): it is run against ``RecordingNode``, a stand-in for the ``declare_parameter`` interface of
``transport.base.Node`` that records every declaration as a ``ParameterSpec`` through the same
``ParameterStore`` the DDS backend uses (type inference, default coercion and validation included).
No field list is repeated here.  A field's constraint in words comes from its dataclass metadata
``rule`` where the config has one (``PolicyNodeConfig``); a validator without words shows "validated".

``launch/README.md`` carries each table between ``<!-- params:<node> begin -->`` and
``<!-- params:<node> end -->``::

    python -m actquant_ros.param_docs                # print the tables
    python -m actquant_ros.param_docs --check        # exit 1 with a diff when the README is stale
    python -m actquant_ros.param_docs --write        # rewrite the tables between the markers
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actquant_core import constants as C
from actquant_ros.echo_node import EchoConfig
from actquant_ros.policy_node import PolicyNodeConfig
from actquant_ros.quantizer_node import QuantizerConfig
from actquant_ros.sim_camera_node import SimCameraConfig
from actquant_ros.transport.params import ParameterError, ParameterSpec, ParameterStore, StoreBackedParameters

__all__ = [
    "NodeParams",
    "NODES",
    "RecordingNode",
    "declared_parameters",
    "render_table",
    "render_block",
    "replace_blocks",
    "regenerate",
    "readme_diff",
    "default_readme",
    "main",
]

log = logging.getLogger(__name__)

MARKER_BEGIN = "<!-- params:{node} begin -->"
MARKER_END = "<!-- params:{node} end -->"
GENERATOR = "python -m actquant_ros.param_docs"


@dataclass(frozen=True)
class NodeParams:
    """One node's parameter source.

    Attributes:
        node: node name (the README marker key, e.g. "policy_node").
        config: config class with ``from_node(node) -> config`` declaring the node's parameters; its
            dataclass field metadata may carry ``rule`` (the constraint in words).
    """

    node: str
    config: type

    @property
    def source(self) -> str:
        """Dotted name of the declaring function (shown above the table)."""
        return f"{self.config.__module__}.{self.config.__qualname__}.from_node"


NODES: tuple[NodeParams, ...] = (
    NodeParams(C.POLICY_NODE_NAME, PolicyNodeConfig),
    NodeParams(C.SIM_CAMERA_NODE_NAME, SimCameraConfig),
    NodeParams(C.QUANTIZER_NODE_NAME, QuantizerConfig),
    NodeParams("echo_node", EchoConfig),  # the name echo_node.main passes to make_node
)


class RecordingNode(StoreBackedParameters):
    """The parameter half of ``transport.base.Node``, recording each declaration (no DDS, no rclpy).

    Values are what a node without overrides gets: the defaults, coerced and validated as on the DDS
    backend (lists come back as tuples).
    """

    def __init__(self, name: str = "param_docs") -> None:
        self.name = name
        self.namespace = ""
        self._params = ParameterStore()

    # declare_parameter (records the spec, returns the default) / get_parameter / set_parameter:
    # StoreBackedParameters, as on the DDS backend's node

    def get_logger(self) -> logging.Logger:
        return logging.getLogger(f"{__name__}.{self.name}")

    @property
    def specs(self) -> list[ParameterSpec]:
        """Declared parameters in declaration order."""
        return [self._params.spec(n) for n in self._params.names()]


def declared_parameters(config: type) -> list[ParameterSpec]:
    """What ``config.from_node`` declares, in order.

    Configs with required parameters (no usable default, e.g. ``policy_gguf``) reject the all-defaults
    values after declaring them; that ``ValueError`` is expected and ignored.  A ``ParameterError``
    (a default that fails its own type or validator) is a bug and propagates.
    """
    node = RecordingNode()
    try:
        config.from_node(node)
    except ParameterError:
        raise
    except ValueError as exc:
        log.debug("%s rejects the defaults (required parameters): %s", config.__name__, exc)
    if not node.specs:
        raise ValueError(f"{config.__name__}.from_node declared no parameters")
    return node.specs


def _rules(config: type) -> dict[str, str]:
    """Field name -> constraint in words, from dataclass field metadata ``rule`` (empty if none)."""
    if not dataclasses.is_dataclass(config):
        return {}
    return {f.name: f.metadata.get("rule", "") for f in dataclasses.fields(config) if f.metadata.get("rule")}


def _value_text(value: Any) -> str:
    """A parameter value as written in a params file / ``-p name:=value`` (YAML spelling)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if value is None:
        return "(none)"
    if value == "":
        return '""'
    return str(value)


def _cell(text: str, code: bool = False) -> str:
    """Markdown table cell text: pipes escaped, newlines folded; outside a code span (``code`` false)
    ``<word`` is escaped so it is not read as an HTML tag."""
    text = " ".join(text.split()).replace("|", "\\|")
    return f"`{text}`" if code else re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def render_table(specs: Sequence[ParameterSpec], rules: Mapping[str, str] | None = None) -> str:
    """Markdown table ``parameter | type | default | constraint | description`` (ends with a newline)."""
    rules = rules or {}
    lines = ["| parameter | type | default | constraint | description |", "|---|---|---|---|---|"]
    for s in specs:
        rule = rules.get(s.name) or ("validated" if s.validator is not None else "")
        lines.append(f"| `{s.name}` | {s.type} | {_cell(_value_text(s.default), code=True)} | {_cell(rule)} | {_cell(s.description)} |")
    return "\n".join(lines) + "\n"


def render_block(entry: NodeParams) -> str:
    """The generated text of one node (between its markers, markers excluded)."""
    table = render_table(declared_parameters(entry.config), _rules(entry.config))
    return (f"Generated by `{GENERATOR} --write` from `{entry.source}` (what the node declares); "
            f"`{GENERATOR} --check` fails when this table is stale.\n\n{table}")


def replace_blocks(text: str, blocks: Mapping[str, str], begin: str = MARKER_BEGIN, end: str = MARKER_END) -> str:
    """``text`` with the part between each node's begin / end marker lines replaced by ``blocks[node]``.

    Raises ValueError naming the node when a marker is missing, repeated or out of order.
    """
    out = text
    for node, block in blocks.items():
        b, e = begin.format(node=node), end.format(node=node)
        nb, ne = out.count(b), out.count(e)
        if nb != 1 or ne != 1:
            raise ValueError(f"{node}: expected one {b!r} and one {e!r} in the README, found {nb} and {ne}")
        i, j = out.index(b) + len(b), out.index(e)
        if j < i:
            raise ValueError(f"{node}: {e!r} comes before {b!r}")
        out = out[:i] + "\n" + block + out[j:]
    return out


def regenerate(text: str, nodes: Sequence[NodeParams] = NODES) -> str:
    """``text`` with the tables of ``nodes`` regenerated between their markers."""
    return replace_blocks(text, {n.node: render_block(n) for n in nodes})


def readme_diff(text: str, nodes: Sequence[NodeParams] = NODES, name: str = "launch/README.md") -> str:
    """Unified diff from ``text`` to its regenerated form ('' when the tables are up to date)."""
    return _diff(text, regenerate(text, nodes), name)


def _diff(old: str, new: str, name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"{name} (current)", tofile=f"{name} (generated)"))


def default_readme() -> Path:
    """``launch/README.md`` of the checkout this package lives in."""
    return Path(__file__).resolve().parents[1] / "launch" / "README.md"


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: print, ``--check`` (exit 1 + diff when stale) or ``--write`` the parameter tables."""
    p = argparse.ArgumentParser(prog=GENERATOR, description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 and print a diff when the README tables are stale")
    mode.add_argument("--write", action="store_true", help="rewrite the tables between the README markers")
    p.add_argument("--readme", type=Path, default=None, help="README to check / write (default: launch/README.md)")
    p.add_argument("--node", action="append", choices=[n.node for n in NODES], default=None,
                   help="only this node (repeatable; default all)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    nodes = [n for n in NODES if args.node is None or n.node in args.node]
    if not (args.check or args.write):
        for n in nodes:
            print(f"## {n.node} parameters\n\n{render_block(n)}")
        return 0
    readme = args.readme or default_readme()
    try:
        text = readme.read_text()
        new = regenerate(text, nodes)
    except (OSError, ValueError) as exc:
        log.error("%s: %s", readme, exc)
        return 2
    if args.check:
        if new != text:
            sys.stdout.write(_diff(text, new, str(readme)))
            log.error("%s is out of date; run `%s --write`", readme, GENERATOR)
            return 1
        log.info("%s: parameter tables up to date (%s)", readme, ", ".join(n.node for n in nodes))
        return 0
    if new != text:
        readme.write_text(new)
        log.info("%s: rewrote the tables of %s", readme, ", ".join(n.node for n in nodes))
    else:
        log.info("%s: already up to date", readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
