"""Evaluation speed: vectorised ranking metrics vs the per-query reference loop.

Usage::

    python benchmarks/bench_eval.py                 # 10 trials each, torch's default threads
    python benchmarks/bench_eval.py --threads 1 --trials 3 --no-rerank
    python benchmarks/bench_eval.py --json docs/results/bench_eval.json   # the README table

Simulates the two standard evaluations at their real sizes, with 2048-d L2-normalised float32
features (a per-identity centre plus noise, so that rankings are neither perfect nor random):

- SYSU-MM01 all-search, single-shot: 3,803 infrared queries (96 identities, cameras 3 and
  6) against a fresh 301-image visible gallery per trial (301 of the 96 x 4 (identity,
  camera) slots of cameras 1, 2, 4, 5, one image each), rule ``"sysu"``.
- RegDB: 2,060 queries against 2,060 gallery images (206 identities x 10), fresh features per
  trial (each trial has its own model), rule ``"regdb"``.

Each trial's time includes the query x gallery similarity matmul, which both sides share;
the table reports the end-to-end times and, separately, the metric alone. The two sides'
CMC, mAP and mINP must agree to 1e-12 (exit status 1 otherwise). Optionally times one
k-reciprocal re-ranking at SYSU-MM01 size. ``--json OUT`` writes the measurements with the
command, machine, torch version, thread count and wall time (:mod:`dclnet.bench.results`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dclnet.bench.components import FEATURE_DIM, regdb_trials, sysu_trials
from dclnet.bench.results import (
    EVAL_LEGEND,
    command_line,
    format_eval_table,
    load_average,
    write_record,
)
from dclnet.evaluation.metrics import RankingMetrics, evaluate_ranking
from dclnet.evaluation.reference import reference_evaluate_ranking
from dclnet.evaluation.rerank import k_reciprocal_rerank

DIM = FEATURE_DIM


def _sysu_trials(trials: int, seed: int):
    return sysu_trials(trials, np.random.default_rng(seed))


def _regdb_trials(trials: int, seed: int):
    return regdb_trials(trials, np.random.default_rng(seed))


def _time_protocol(trials, rule: str) -> dict[str, float]:
    times = {"matmul": 0.0, "vectorised": 0.0, "loop": 0.0, "diff": 0.0}
    first: RankingMetrics | None = None
    for query, gallery, q_lab, g_lab, q_cam, g_cam in trials:
        start = time.perf_counter()
        sim = query @ gallery.t()  # Q x G cosine similarity
        times["matmul"] += time.perf_counter() - start
        results = []
        for name, evaluate in (
            ("vectorised", evaluate_ranking),
            ("loop", reference_evaluate_ranking),
        ):
            start = time.perf_counter()
            results.append(evaluate(sim, q_lab, g_lab, q_cam, g_cam, rule=rule))
            times[name] += time.perf_counter() - start
        fast, slow = results
        first = first or fast
        diff = max(
            float(np.abs(fast.cmc - slow.cmc).max()),
            abs(fast.mAP - slow.mAP),
            abs(fast.mINP - slow.mINP),
            float(fast.num_valid != slow.num_valid),
        )
        times["diff"] = max(times["diff"], diff)
    percent = first.as_percent()
    print(
        f"  {rule}, trial 0: rank-1 {percent['rank1']:.2f}  mAP {percent['mAP']:.2f}  "
        f"mINP {percent['mINP']:.2f}",
        flush=True,
    )
    return times


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-rerank", action="store_true", help="skip the re-ranking timing")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    started, load_start = time.perf_counter(), load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch CPU threads, "
        f"{os.cpu_count()} CPUs, load average {load_start}, "
        f"{args.trials} trials per protocol",
        flush=True,
    )
    # Warm up kernels and allocator outside the timings.
    for trials, rule in ((_sysu_trials(1, 99), "sysu"), (_regdb_trials(1, 99), "regdb")):
        for query, gallery, q_lab, g_lab, q_cam, g_cam in trials:
            evaluate_ranking(
                query[:500] @ gallery.t(), q_lab[:500], g_lab, q_cam[:500], g_cam, rule=rule
            )
    protocols = [
        {"name": "SYSU-MM01 all-search (3,803 x 301)", "rule": "sysu"},
        {"name": "RegDB (2,060 x 2,060)", "rule": "regdb"},
    ]
    for row in protocols:
        make = _sysu_trials if row["rule"] == "sysu" else _regdb_trials
        times = _time_protocol(make(args.trials, args.seed), row["rule"])
        row.update({f"{k}_s": times[k] for k in ("matmul", "vectorised", "loop")})
        row["max_abs_diff"] = times["diff"]
    rerank = None
    if not args.no_rerank:
        query, gallery, *_ = next(_sysu_trials(1, args.seed))
        start = time.perf_counter()
        k_reciprocal_rerank(query, gallery)
        rerank = time.perf_counter() - start
    record = {
        "trials": args.trials,
        "seed": args.seed,
        "feature_dim": DIM,
        "load_average": {"start": load_start, "end": load_average()},
        "protocols": protocols,
        "rerank_seconds": rerank,
    }
    print(format_eval_table(record))
    print(EVAL_LEGEND)
    print(f"load average at the end {record['load_average']['end']}")
    if args.json is not None:
        seconds = time.perf_counter() - started
        command = command_line("python benchmarks/bench_eval.py", argv)
        write_record(args.json, command=command, seconds=seconds, **record)
        print(f"wrote {args.json}")
    worst = max(row["max_abs_diff"] for row in protocols)
    if worst > 1e-12:
        print(f"MISMATCH: vectorised and loop results differ by {worst:.3e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
