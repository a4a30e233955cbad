"""launch/README.md parameter tables vs what the nodes declare (``actquant_ros.param_docs``); no DDS."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from actquant_ros import param_docs as D
from actquant_ros.policy_node import PolicyNodeConfig
from actquant_ros.transport import Node, ParameterError

REGENERATE = "python -m actquant_ros.param_docs --write"


def _rows(block: str) -> list[list[str]]:
    """Cells of the table rows of a generated block (header and rule line excluded)."""
    lines = [ln for ln in block.splitlines() if ln.startswith("| `")]
    # split on unescaped pipes only
    return [[c.strip() for c in ln.replace("\\|", "\0").strip("|").split("|")] for ln in lines]


def test_launch_readme_tables_are_up_to_date():
    diff = D.readme_diff(D.default_readme().read_text())
    assert diff == "", f"launch/README.md parameter tables are stale; regenerate with `{REGENERATE}`:\n{diff}"


def test_policy_table_lists_every_config_field_with_its_default_and_rule():
    entry = next(n for n in D.NODES if n.node == "policy_node")
    rows = _rows(D.render_block(entry))
    fields = dataclasses.fields(PolicyNodeConfig)
    assert [r[0] for r in rows] == [f"`{f.name}`" for f in fields]
    assert all(len(r) == 5 for r in rows), [r for r in rows if len(r) != 5]  # '|' in descriptions is escaped
    by_name = {r[0].strip("`"): [c.replace("\0", "|") for c in r] for r in rows}
    assert by_name["dry_run"][1:3] == ["bool", "`true`"]
    assert by_name["gripper_output"][1:3] == ["int", "`-1`"]
    assert by_name["camera_topics"][1] == "str_array"
    assert by_name["camera_topics"][2] == f"`[{', '.join(PolicyNodeConfig.camera_topics)}]`"
    for f in fields:
        assert by_name[f.name][3] == f.metadata["rule"], f.name
        assert by_name[f.name][4] == f.metadata["description"], f.name


def test_recording_node_implements_the_declare_parameter_signature():
    import inspect

    assert inspect.signature(D.RecordingNode.declare_parameter) == inspect.signature(Node.declare_parameter)


@dataclass(frozen=True)
class _ExtraConfig(PolicyNodeConfig):
    """PolicyNodeConfig plus one parameter (what adding a field to the real config does)."""

    extra_gain: float = field(default=2.5, metadata={"description": "an added knob", "check": lambda v: v > 0, "rule": "> 0"})


def test_added_parameter_makes_the_readme_stale():
    text = D.default_readme().read_text()
    diff = D.readme_diff(text, [D.NodeParams("policy_node", _ExtraConfig)])
    assert "+| `extra_gain` | float | `2.5` | > 0 | an added knob |" in diff.splitlines()


def _config(names: tuple[str, ...]) -> type:
    """A config whose ``from_node`` declares int parameters ``names`` (a node's parameters renamed)."""

    class Cfg:
        @classmethod
        def from_node(cls, node: Node) -> None:
            for i, n in enumerate(names):
                node.declare_parameter(n, i, f"knob {i}", lambda v: v >= 0)

    return Cfg


def test_renamed_parameter_is_detected_by_check_and_fixed_by_write(tmp_path, capsys, monkeypatch):
    old = D.NodeParams("policy_node", _config(("rate_hz", "depth")))
    new = D.NodeParams("policy_node", _config(("rate_hz", "queue_depth")))
    readme = tmp_path / "README.md"
    readme.write_text(D.regenerate("# t\n\n<!-- params:policy_node begin -->\n<!-- params:policy_node end -->\n", [old]))
    text = readme.read_text()
    assert D.readme_diff(text, [old]) == ""
    diff = D.readme_diff(text, [new])
    assert "-| `depth` | int | `1` | validated | knob 1 |" in diff.splitlines()
    assert "+| `queue_depth` | int | `1` | validated | knob 1 |" in diff.splitlines()

    monkeypatch.setattr(D, "NODES", (new,))  # as if policy_node's config had renamed the field
    assert D.main(["--check", "--readme", str(readme)]) == 1
    assert "+| `queue_depth` |" in capsys.readouterr().out
    assert D.main(["--write", "--readme", str(readme)]) == 0
    assert D.main(["--check", "--readme", str(readme)]) == 0
    assert "`queue_depth`" in readme.read_text() and "`depth`" not in readme.read_text()


def test_cli_check_and_write_on_a_stale_copy(tmp_path, capsys):
    readme = tmp_path / "README.md"
    text = D.default_readme().read_text()
    stale = text.replace("| `threads` | int | `0` |", "| `threads` | int | `4` |", 1)
    assert stale != text
    readme.write_text(stale)
    assert D.main(["--check", "--readme", str(readme)]) == 1
    out = capsys.readouterr().out
    assert "-| `threads` | int | `4` |" in out and "+| `threads` | int | `0` |" in out
    assert D.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text() == text
    assert D.main(["--check", "--readme", str(readme)]) == 0


def test_missing_or_repeated_markers_are_named():
    with pytest.raises(ValueError, match="policy_node: expected one"):
        D.replace_blocks("no markers here\n", {"policy_node": "x\n"})
    twice = "<!-- params:echo_node begin -->\n<!-- params:echo_node end -->\n" * 2
    with pytest.raises(ValueError, match="found 2 and 2"):
        D.replace_blocks(twice, {"echo_node": "x\n"})
    backwards = "<!-- params:echo_node end -->\n<!-- params:echo_node begin -->\n"
    with pytest.raises(ValueError, match="comes before"):
        D.replace_blocks(backwards, {"echo_node": "x\n"})


def test_a_default_that_fails_its_validator_is_an_error_not_a_table():
    class Bad:
        @classmethod
        def from_node(cls, node: Node) -> None:
            node.declare_parameter("rate_hz", -1.0, "rate", lambda v: v > 0)

    with pytest.raises(ParameterError, match="rate_hz"):
        D.declared_parameters(Bad)
