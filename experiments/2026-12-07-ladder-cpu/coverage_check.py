"""How often the ladder fit's 95% intervals hold the truth: runs generated from known laws on the CPU ladder's rungs
and budgets (a baseline L(C) per budget line; one activation at a constant compute multiplier of 2, one whose
multiplier grows as C^0.15), Gaussian seed noise, ``polycom.report.ladder.fit_ladder`` on each of many datasets.

    python experiments/2026-12-07-ladder-cpu/coverage_check.py [--datasets 40] [--seeds 3] [--noise 0.004]

Prints the share of intervals that contain the true value: each cell's multiplier, and each budget line's trend slope
(0 for the constant multiplier, 0.15 for the growing one), with the spread of the slope estimates next to the mean
bootstrap standard error (interval width / 3.92); then the same shares for the multiplier against the baseline's
L(C) pinned to its cells (``multiplier_vs_cells``).
L(N, D) is left out (it does not enter these intervals).
"""

from __future__ import annotations

import argparse

import numpy as np

from polycom.report import ladder, scaling

E, ALPHA, A_LINE, SEQ, V = 2.0, 0.25, {"t5": 3300.0, "t20": 3000.0}, 256, 4096


def truth(act: str, c: float) -> float:
    return {"swiglu": 1.0, "polynorm": 2.0, "gelu": 0.7 * (c / 1e13) ** 0.15}[act]


def dataset(rng, seeds: int, noise: float) -> list[dict]:
    rows = []
    for rung in ladder.ladder_rungs("cpu").values():
        d, layers = rung.dims[:2]
        for budget in ("t5", "t20"):
            tokens = rung.budgets[budget]
            c = ladder.flops_per_token(rung.params + V * d, layers, d, SEQ) * tokens
            for act in ("swiglu", "polynorm", "gelu"):
                clean = E + A_LINE[budget] * (truth(act, c) * c) ** -ALPHA
                rows += [dict(activation=act, seed=s, rung=rung.name, budget=budget, params=rung.params,
                              tokens=tokens, compute=c, loss=clean + rng.normal(0, noise), lr=2e-3,
                              tokens_per_s=1.0) for s in range(seeds)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.004)
    parser.add_argument("--replicates", type=int, default=300)
    args = parser.parse_args()

    def skip(*_, **__):
        raise ValueError("left out")

    scaling.fit_chinchilla = skip
    rng = np.random.default_rng(2026)
    cells, trends, slopes, ses = [], [], {"polynorm": [], "gelu": []}, {"polynorm": [], "gelu": []}
    vs_cells, vs_cells_trends = [], []  # the same against the baseline's L(C) pinned to its cells
    for _ in range(args.datasets):
        result = ladder.fit_ladder(dataset(rng, args.seeds, args.noise), replicates=args.replicates,
                                   seed=int(rng.integers(1 << 30)))
        for act, slope_true in (("polynorm", 0.0), ("gelu", 0.15)):
            entry = result["activations"][act]
            cells += [c["multiplier_ci95"][0] <= truth(act, c["compute"]) <= c["multiplier_ci95"][1]
                      for c in entry["cells"]]
            vs_cells += [lo <= truth(act, c["compute"]) <= hi
                         for c in entry["cells"] for lo, hi in [c["multiplier_vs_cells_ci95"]]]
            vs_cells_trends += [t["slope_ci95"][0] <= slope_true <= t["slope_ci95"][1]
                                for t in entry["trend_vs_cells"].values()]
            for t in entry["trend"].values():
                trends.append(t["slope_ci95"][0] <= slope_true <= t["slope_ci95"][1])
                slopes[act].append(t["slope"] - slope_true)
                ses[act].append((t["slope_ci95"][1] - t["slope_ci95"][0]) / 3.92)
    print(f"{args.datasets} datasets, {args.seeds} seeds per cell, noise {args.noise}, {args.replicates} replicates")
    print(f"multiplier intervals holding the truth: {np.mean(cells):.3f} of {len(cells)}")
    print(f"trend intervals holding the truth: {np.mean(trends):.3f} of {len(trends)}")
    print(f"against the baseline's L(C) pinned to its cells: multiplier intervals holding the truth "
          f"{np.mean(vs_cells):.3f}, trend intervals {np.mean(vs_cells_trends):.3f}")
    for act in slopes:
        print(f"{act}: slope error mean {np.mean(slopes[act]):+.4f}, sd {np.std(slopes[act]):.4f}; "
              f"mean bootstrap se {np.mean(ses[act]):.4f}")


if __name__ == "__main__":
    main()
