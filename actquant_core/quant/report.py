"""Quantization report: Markdown + PNG figures (matplotlib, Agg backend: no display needed).

* per-layer type heatmap: rows = layer (group and index), columns = tensor kind (q, k, v, o, gate,
  up, down, ...), colour = bits per weight of the chosen type, the type name written in each cell;
* score bars: the allocation score of every allocated tensor (HSIC sensitivity for ActQuant /
  HSIC-only, weighted error for the generic allocator), coloured by its bits;
* bpw-vs-error curve (:func:`write_comparison`): one line per method over several runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .plan import QuantPlan

log = logging.getLogger(__name__)

__all__ = ["layer_grid", "plot_type_heatmap", "plot_scores", "plot_bpw_curve", "write_report", "write_comparison"]

_LAYER_RX = re.compile(r"^(?P<group>[a-z]+)\.blk\.(?P<layer>\d+)\.(?P<kind>[a-z_0-9]+)\.weight$")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def layer_grid(plan: QuantPlan) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    """(row labels "group.layer", column labels "kind", {(row, col): type}) of the per-layer 2-D weights."""
    rows: list[str] = []
    cols: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for e in plan.entries:
        m = _LAYER_RX.match(e.name)
        if not m or len(e.shape) < 2:
            continue
        r, c = f"{m['group']}.{int(m['layer']):02d}", m["kind"]
        if r not in rows:
            rows.append(r)
        if c not in cols:
            cols.append(c)
        cells[(r, c)] = e.ggml_type
    return rows, cols, cells


def plot_type_heatmap(plan: QuantPlan, path: Path) -> Path | None:
    """Per-layer type heatmap (bits per weight) -> PNG; None when the plan has no per-layer weights."""
    import numpy as np

    from .types import type_bpw

    rows, cols, cells = layer_grid(plan)
    if not rows:
        return None
    plt = _plt()
    grid = np.full((len(rows), len(cols)), np.nan)
    for (r, c), t in cells.items():
        grid[rows.index(r), cols.index(c)] = type_bpw(t)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(cols), 1.0 + 0.28 * len(rows)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=1.5, vmax=8.5)  # F16/F32 saturate
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    for (r, c), t in cells.items():
        ax.text(cols.index(c), rows.index(r), t, ha="center", va="center", fontsize=5, color="white")
    fig.colorbar(im, ax=ax, label="bits per weight", extend="max")
    ax.set_title(f"{plan.method}: types per layer (budget {plan.budget_bpw})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_scores(plan: QuantPlan, path: Path) -> Path | None:
    """Bar chart of the allocated tensors' scores (coloured by bits) -> PNG; None without scores."""
    from .types import type_bpw

    es = [e for e in plan.entries if e.role == "linear" and e.score is not None]
    if not es:
        return None
    plt = _plt()
    import matplotlib.cm as cm

    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(es)), 3.5))
    colors = [cm.viridis(min(1.0, (type_bpw(e.ggml_type) - 1.5) / 7.0)) for e in es]
    ax.bar(range(len(es)), [e.score for e in es], color=colors)
    ax.set_xticks(range(len(es)), [e.name.replace(".weight", "") for e in es], rotation=90, fontsize=5)
    ax.set_ylabel("score")
    ax.set_title(f"{plan.method}: allocation scores (colour = bits)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bpw_curve(runs: Sequence[Mapping[str, Any]], path: Path, error_key: str = "l1",
                   bpw_key: str = "bpw_backbone") -> Path | None:
    """bpw-vs-error lines per method from ``runs`` (dicts with "method", ``bpw_key``, ``error_key``)."""
    pts = [r for r in runs if r.get(error_key) is not None and r.get(bpw_key) is not None]
    if len(pts) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method in dict.fromkeys(r["method"] for r in pts):
        xs = sorted((float(r[bpw_key]), float(r[error_key])) for r in pts if r["method"] == method)
        ax.plot([x for x, _ in xs], [y for _, y in xs], marker="o", label=method)
    ax.set_xlabel(bpw_key.replace("_", " "))
    ax.set_ylabel(f"action error ({error_key})")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def write_report(path: str | Path, result: Any, runs: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Markdown report of a :class:`~.pipeline.QuantizeResult` with its PNG figures beside it."""
    path = Path(path)
    stem = path.name[: -len(".md")] if path.name.endswith(".md") else path.name
    plan: QuantPlan = result.plan
    lines = [f"# Quantization report: {plan.method}", ""]
    s = plan.summary()
    lines += [
        f"- GGUF: `{result.gguf_path.name}` ({result.file_size / 1e6:.2f} MB); plan: `{result.plan_path.name}`",
        f"- budget {plan.budget_bpw} bpw; backbone {plan.bpw_backbone:.4f} bpw (nominal "
        f"{plan.bpw_backbone_nominal:.4f}); whole model {plan.bpw_whole:.4f} bpw",
        f"- scope: {plan.meta.get('scope', '?')}; objectives: {s['objectives']}",
        f"- types: {s['type_counts']}",
        f"- wall time (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()),
    ]
    cal = result.calibration
    if cal is not None:
        lines.append(f"- calibration: {cal.n_frames} frames, {cal.fisher_batches} Fisher batches"
                     + (f", mean losses {cal.fisher_losses}" if cal.fisher_losses else ""))
    n_fb = sum("fallback" in e.reason for e in plan.entries)
    lines.append(f"- eligibility fallbacks: {n_fb}")
    lines.append("")
    figs = []
    heat = plot_type_heatmap(plan, path.with_name(stem + ".types.png"))
    if heat is not None:
        figs.append(("Types per layer", heat))
    bars = plot_scores(plan, path.with_name(stem + ".scores.png"))
    if bars is not None:
        figs.append(("Allocation scores", bars))
    if runs:
        curve = plot_bpw_curve(runs, path.with_name(stem + ".curve.png"))
        if curve is not None:
            figs.append(("bpw vs action error", curve))
    for title, f in figs:
        lines += [f"## {title}", "", f"![{title}]({f.name})", ""]
    if result.refine:
        lines += ["## Refinement (Fisher-weighted error)", ""]
        lines.append(_md_table(["tensor", "before", "after", "gain %"],
                               [(n, b, a, 100.0 * (b - a) / max(b, 1e-30)) for n, (b, a) in result.refine.items()]))
        lines.append("")
    terms = cal.hsic.terms if cal is not None and cal.hsic is not None else {}
    lines += ["## Tensors", ""]
    rows = []
    for e in plan.entries:
        t = terms.get(e.name)
        rows.append((e.name, "x".join(map(str, e.shape)), e.ggml_type, e.bits, "" if e.score is None else e.score,
                     "" if t is None else t.f_in, "" if t is None else t.f_out, e.importance, e.reason))
    lines.append(_md_table(["tensor", "shape", "type", "bits", "score", "F(in)", "F(out)", "importance", "reason"], rows))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_comparison(path: str | Path, runs: Sequence[Mapping[str, Any]], title: str = "bpw vs action error",
                     error_key: str = "l1") -> Path:
    """Markdown table + bpw-vs-error PNG for several runs (dicts: method, bpw, bpw_backbone, errors...)."""
    path = Path(path)
    stem = path.name[: -len(".md")] if path.name.endswith(".md") else path.name
    keys = ["method", "bpw", "bpw_backbone", "bpw_whole", "l1", "nmse", "file_size", "seconds"]
    rows = [[r.get(k, "") for k in keys] for r in runs]
    lines = [f"# {title}", "", _md_table(keys, rows), ""]
    curve = plot_bpw_curve(runs, path.with_name(stem + ".curve.png"), error_key=error_key)
    if curve is not None:
        lines += [f"![curve]({curve.name})", ""]
    path.write_text("\n".join(lines))
    return path
