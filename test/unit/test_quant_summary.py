"""bench/quant_summary.py: the quantizer issue's targets judged from quant_table.py results."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("quant_summary", ROOT / "bench" / "quant_summary.py")
qs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qs)

META = {"model": "m", "checkpoint": "ck", "calib": "/x/build/demos/lerobot", "calib_frames": 32, "eval_frames": 16,
        "eval_split": "holdout", "seed": 0, "fisher_batches": 4, "targets": "data"}


def _table(path, rows, **meta):
    path.write_text(json.dumps({"meta": META | meta, "rows": rows}))
    return path


def _row(variant, method, bpw, l1, status="ok"):
    return {"variant": variant, "method": method, "bpw": bpw, "l1": l1, "status": status, "bpw_backbone": bpw}


def test_target_met_only_when_default_beats_every_baseline_at_judged_bpw(tmp_path):
    d = _table(tmp_path / "d.json", [_row("aq-r128", "actquant", 3.5, 0.01), _row("aq-r128", "actquant", 4.0, 0.05),
                                     _row("aq-other", "actquant", 3.5, 0.0001)])
    b = _table(tmp_path / "b.json", [_row("gptq", "gptq", 3.5, 0.02), _row("rtn", "rtn", 3.5, 0.03),
                                     _row("gptq", "gptq", 4.0, 0.01), _row("rtn+best", "rtn", 3.5, 0.005),
                                     _row("imatrix", "imatrix", 3.5, None, status="budget too low")],
               calib="build/demos/lerobot")  # the same folder given relative
    s = qs.summarize_family("f", (d, "r128"), [b])
    by = {r["bpw"]: r for r in s["rows"]}
    assert by[3.5]["default"]["l1"] == 0.01  # the pattern picks the default's rows only
    assert by[3.5]["best_baseline"] == "gptq" and by[3.5]["beats_every_baseline"]
    assert by[3.5]["beats_controls"] is False  # a control is reported, not judged
    assert "imatrix" in by[3.5]["missing_baselines"]  # a failed row is no baseline
    assert not by[4.0]["beats_every_baseline"]  # 4 bpw loses, but only bpw <= 3.5 is judged
    assert s["target_met"]
    b2 = _table(tmp_path / "b2.json", [_row("generic", "generic", 3.5, 0.009)])
    assert not qs.summarize_family("f", (d, "r128"), [b, b2])["target_met"]
    # a baseline recorded in two tables is judged by its better row, whichever table comes first
    b3 = _table(tmp_path / "b3.json", [_row("gptq", "gptq", 3.5, 0.008)])
    for order in ([b, b3], [b3, b]):
        s3 = qs.summarize_family("f", (d, "r128"), order)
        r3 = next(r for r in s3["rows"] if r["bpw"] == 3.5)
        assert r3["baselines"]["gptq"]["l1"] == 0.008 and not s3["target_met"]


def test_tables_of_different_calibrations_are_refused(tmp_path):
    d = _table(tmp_path / "d.json", [_row("aq", "actquant", 3.5, 0.01)])
    b = _table(tmp_path / "b.json", [_row("gptq", "gptq", 3.5, 0.02)], eval_frames=64)
    with pytest.raises(SystemExit, match="b.json has eval_frames=64.*different calibrations"):
        qs.summarize_family("f", (d, "aq"), [b])
    with pytest.raises(SystemExit, match="no actquant row .* matches variant 'zzz'"):
        qs.summarize_family("f", (d, "zzz"), [])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match="cannot read .*bad.json"):
        qs.summarize_family("f", (tmp_path / "bad.json", "aq"), [])


def test_cli_writes_summary_with_pipeline_verdict(tmp_path):
    _table(tmp_path / "d.json", [_row("aq", "actquant", 3.0, 0.01)])
    _table(tmp_path / "b.json", [_row("rtn", "rtn", 3.0, 0.02)])
    (tmp_path / "p.json").write_text(json.dumps({"preset": "pi05", "pipeline_wall_s": 25 * 60, "gpu": "G"}))
    out = tmp_path / "s.json"
    assert qs.main(["--family", "f", "--default", "d.json:aq", "--baselines", "b.json", "--pipeline", "p.json",
                    "--results", str(tmp_path), "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["families"]["f"]["target_met"] and s["pipelines"][0]["wall_min"] == 25.0
    assert not s["pipelines"][0]["within_target"] and not s["all_targets_met"]  # 25 min is over the 20-min target
