"""`actquant` CLI: subcommand registry, no torch for building the parser, clear errors."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from actquant_core import cli


def test_parser_builds_without_torch():
    code = ("import sys; from actquant_core.cli import build_parser; p = build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported by the parser'; "
            "print(sorted(p._subparsers._group_actions[0].choices))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert {"quantize", "export", "eval-actions"} <= set(eval(out))  # noqa: S307 - our own printed list


def test_registered_module_adds_its_subcommand(monkeypatch, capsys):
    mod = types.ModuleType("fake_eval_sim")
    calls = []

    def register(sub):
        p = sub.add_parser("eval-sim", help="closed-loop evaluation")
        p.add_argument("--episodes", type=int, default=1)
        p.set_defaults(func=lambda args: calls.append(args.episodes) or 0)

    mod.register = register
    monkeypatch.setitem(sys.modules, "fake_eval_sim", mod)
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("fake_eval_sim", "actquant_core.not_a_module_yet"))
    assert cli.main(["eval-sim", "--episodes", "3"]) == 0
    assert calls == [3]


def test_module_without_register_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "fake_broken", types.ModuleType("fake_broken"))
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("fake_broken",))
    with pytest.raises(AttributeError, match="fake_broken has no register"):
        cli.build_parser()


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["quantize", "--checkpoint", str(tmp_path / "nope"), "--calib", str(tmp_path), "-o",
                   str(tmp_path / "x.gguf")])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err
