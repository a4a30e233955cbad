"""`make demo` — the main job on an embedded default.

Current stage: quantize a weight matrix to several GGML types, write a mixed-type GGUF, load it with the
native runtime and run matmuls, printing error, bpw and latency. (The deployment demo — bundled small pi0.5 →
ActQuant → simulated UR3 over RTDE — replaces this once the policy runtime and the UR simulator exist.)
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("actquant.demo")


def smoke(out_dir: Path, rows: int = 1024, cols: int = 1024, threads: int = 2) -> dict[str, dict[str, float]]:
    from actquant_core import native
    from actquant_core.gguf import TensorEntry, write_policy_gguf

    rng = np.random.default_rng(0)
    W = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    imp = (x[0] ** 2 + 1e-3).astype(np.float32)
    types = ["F16", "Q8_0", "Q4_K", "Q3_K", "Q2_K", "IQ2_XS"]
    path = out_dir / "demo.gguf"
    res = write_policy_gguf(path, "test", {"rows": rows, "cols": cols},
                            [TensorEntry(f"w.{t}", W, t, imp) for t in types])
    backend = native.Backend(threads)
    model = native.GgufModel(path, backend)
    ref = x.astype(np.float64) @ W.T.astype(np.float64)
    out: dict[str, dict[str, float]] = {}
    for t in types:
        native.mul_mat(model, backend, f"w.{t}", x)
        t0 = time.perf_counter()
        for _ in range(20):
            y = native.mul_mat(model, backend, f"w.{t}", x)
        ms = (time.perf_counter() - t0) / 20 * 1e3
        rel = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
        out[t] = {"bpw": native.type_traits(t)["bpw"], "rel_err": rel, "ms": ms}
    print(f"GGUF {path} ({path.stat().st_size / 1e6:.2f} MB, {res.bpw.bpw:.2f} bpw overall) on {backend.description}")
    print(f"{'type':8s} {'bpw':>6s} {'rel.err':>9s} {'ms/matmul':>10s}")
    for t, r in out.items():
        print(f"{t:8s} {r['bpw']:6.3f} {r['rel_err']:9.2e} {r['ms']:10.3f}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        smoke(args.out)
    else:
        with tempfile.TemporaryDirectory() as d:
            smoke(Path(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
