"""README result sections equal what their results files say (no stale numbers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dclnet.reporting import main, render_readme, replace_section

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "doc, sections",
    [
        ("README.md", ("demo",)),
        ("docs/study.md", ("locality", "probe", "study", "study96", "diagnose-full", "shift")),
        ("docs/synthetic.md", ("first-run", "comparison")),
        (
            "docs/benchmarks.md",
            ("bench-train", "bench-eval", "bench-dense", "bench-small", "bench-real", "bench-gpu"),
        ),
        ("docs/search.md", ("bench-search",)),
        ("docs/serve.md", ("bench-serve",)),
    ],
)
def test_documents_match_results_files(doc, sections):
    text = (ROOT / doc).read_text()
    for name in sections:
        assert f"<!-- results:{name} -->" in text, name
    assert render_readme(text, ROOT / "docs" / "results") == text, (
        f"{doc}: result sections are stale: run python -m dclnet.reporting"
    )


def _demo_record(rank1: float) -> dict:
    mean = {"rank1": rank1, "mAP": 2.0, "mINP": 1.0}
    return {
        "command": "dclnet demo",
        "baseline": {"mean": mean},
        "dclnet": {"mean": mean},
        "config": {"data": {"synthetic_seed": 0}},
        "seconds": 60.0,
        "machine": "x86_64 CPU, 2 cores",
        "torch": "2.13.0",
        "threads": 2,
    }


def test_regeneration_rewrites_only_the_sections(tmp_path):
    import json

    results = tmp_path / "results"
    results.mkdir()
    (results / "demo.json").write_text(json.dumps(_demo_record(12.5)))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:demo -->\nold 99.99\n<!-- /results:demo -->\nend\n")
    assert main([str(readme), str(results), "--check"]) == 1  # stale
    assert main([str(readme), str(results)]) == 0
    new = readme.read_text()
    assert new.startswith("intro\n<!-- results:demo -->\n") and new.endswith("-->\nend\n")
    assert "12.50" in new and "99.99" not in new
    assert main([str(readme), str(results), "--check"]) == 0
    (results / "demo.json").write_text(json.dumps(_demo_record(13.0)))
    assert main([str(readme), str(results), "--check"]) == 1  # a changed file is caught


def test_unknown_or_missing_sections_are_errors():
    with pytest.raises(ValueError, match="no renderer"):
        render_readme("<!-- results:nope -->\n<!-- /results:nope -->", Path("."))
    with pytest.raises(ValueError, match="results:study"):
        replace_section("no markers here", "study", "body")


def _bench_small(value: float) -> dict:
    rows = [
        ("train step, baseline (id + metric)", value, "images/s"),
        ("train step, full DCLNet", value / 2, "images/s"),
        ("resnet18 forward+backward (plain)", value, "images/s"),
        ("full DCLNet step / plain forward+backward", 2.0, "x time"),
    ]
    settings = {"name": "small", "arch": "resnet18", "height": 128, "width": 64, "num_ids": 4,
                "num_instances": 4, "load_average_start": 0.5}  # fmt: skip
    hardware = {"cpu": "CPU", "cpu_count": 2, "torch_threads": 1, "torch": "2.13.0",
                "load_average": 0.7, "platform": "Linux", "python": "3.11"}  # fmt: skip
    return {
        **_demo_record(1.0),
        "command": "dclnet benchmark --json x.json",
        "hardware": hardware,
        "settings": settings,
        "rows": [
            {
                "benchmark": b,
                "device": "cpu",
                "dtype": "fp32",
                "batch": "32",
                "size": "128x64 resnet18",
                "value": v,
                "unit": u,
                "peak_mb": None,
                "note": "",
            }
            for b, v, u in rows
        ],  # fmt: skip
    }


def test_benchmark_sections_follow_their_files(tmp_path):
    import json

    results = tmp_path / "results"
    results.mkdir()
    (results / "bench_small.json").write_text(json.dumps(_bench_small(118.0)))
    doc = tmp_path / "bench.md"
    doc.write_text(
        "<!-- results:bench-train -->\n<!-- /results:bench-train -->\n"
        "<!-- results:bench-real -->\n<!-- /results:bench-real -->\n"
    )
    assert main([str(doc), str(results)]) == 0
    text = doc.read_text()
    assert "| baseline step | 118 img/s |" in text and "| full DCLNet step | 59 img/s |" in text
    assert "| full-step time / plain time | 2× |" in text
    assert text.count("Not measured in this tree") == 2  # no bench_real.json: says how to
    assert "load average 0.5 → 0.7" in text
    (results / "bench_real.json").write_text(json.dumps(_bench_small(4.0)))
    assert main([str(doc), str(results), "--check"]) == 1  # a new file makes the doc stale


def test_every_document_with_sections_is_listed():
    from dclnet.reporting import DOCUMENTS

    found = sorted(
        str(p.relative_to(ROOT))
        for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
        if "<!-- results:" in p.read_text()
    )
    assert found == sorted(DOCUMENTS)


def _first_run_record(rank1: float, pretrain: float, style: str = "default") -> dict:
    record = _demo_record(rank1)
    record["config"] = {
        "data": {"synthetic_seed": 7, "height": 96, "width": 48, "synthetic_style": style},
        "model": {"pretrain_size": [64, 32], "pretrain_steps": 800, "pretrain_style": "wide"},
    }
    record.update(seconds=480.0, pretrain_seconds=pretrain, load_average=[1.5, 1.0, 1.0])
    return record


def test_first_run_table_follows_its_files(tmp_path):
    import json

    from dclnet.reporting import render_demo, render_first_run

    folder = tmp_path / "first_run"
    folder.mkdir()
    assert "Not measured yet" in render_first_run(folder)
    (folder / "s64-wide-seed7.json").write_text(json.dumps(_first_run_record(30.0, 240.0)))
    cnn = {
        **_demo_record(0),
        "mean": {"rank1": 25.0, "mAP": 3.0, "mINP": 2.0},
        "train_seconds": 480.0,
        "command": "python benchmarks/synthetic_gap.py --protocol --style heldout",
    }
    (folder / "cnn-heldout.json").write_text(json.dumps(cnn))
    table = render_first_run(folder)
    row = next(x for x in table.splitlines() if "`s64-wide`" in x)
    recipe = "64 × 32, 800 steps × 64 images, lr 0.001, 512 people, wide look"
    assert f"{recipe} | 8.0 min | 4.0 min" in row
    assert row.endswith("| 30.00 / 2.00 / 1.00 | not run |")  # no held-out file yet
    cnn_row = next(x for x in table.splitlines() if "small CNN" in x)
    assert "| 8.0 min of training | – | " in cnn_row  # then the CPU and threads it ran on
    assert cnn_row.endswith(" thread | not run | 25.00 / 3.00 / 2.00 |") or cnn_row.endswith(
        " threads | not run | 25.00 / 3.00 / 2.00 |"
    )
    assert "(load average 1.5 at its end)" in table and "--protocol --style heldout`" in table
    # the demo block says what the whole first run cost, pretraining included
    block = render_demo(_first_run_record(30.0, 240.0))
    assert "8.0 min for the whole command on an empty cache**, of which 4.0 min" in block
    assert "backbone already cached" in render_demo(_first_run_record(30.0, 0.0))


def test_demo_block_measures_the_summation_order_spread():
    from dclnet.reporting import render_demo

    two, one = _demo_record(32.0), {**_demo_record(30.5), "threads": 1}
    one["command"] = "dclnet demo data.synthetic_seed=7"
    block = render_demo(_demo_record(40.0), [two, one])
    assert "rank-1 32.00 / mAP 2.00 / mINP 1.00 with 2 threads and 30.50 / 2.00 / 1.00" in block
    assert "1.5 rank-1 points and 0.0 mAP points apart (the first run predates" in block
    two["cpu"] = one["cpu"] = "AMD EPYC"
    two["cpu_capability"] = one["cpu_capability"] = "AVX2"
    assert "apart with nothing changed but the thread count" in render_demo(two, [two, one])
    one["cpu"] = "Intel(R) Xeon(R) Processor"
    assert "apart: another CPU and another thread count." in render_demo(two, [two, one])
    one["threads"] = 2
    assert "apart: another CPU." in render_demo(two, [two, one])
    assert "summation order" not in render_demo(_demo_record(40.0))


def test_demo_block_reports_the_command_on_other_cpus():
    """The README command run on another machine: its numbers, its whole time and pretraining,
    the 10-minute target named when a first run missed it, the gap to the main record."""
    import pytest

    from dclnet.reporting import render_demo

    main = _first_run_record(30.0, 150.0)
    main["command"] = "dclnet demo"
    slow = {**_first_run_record(34.5, 430.0), "command": "dclnet demo", "seconds": 700.0}
    slow["cpu"], slow["cpu_capability"] = "Intel(R) Xeon(R) Processor", "AVX512"
    block = render_demo(main, elsewhere=[slow])
    sentence = next(x for x in block.splitlines() if x.startswith("The same command on"))
    assert "(Intel(R) Xeon(R) Processor, AVX512 kernels)" in sentence
    assert "34.50 / 2.00 / 1.00 and took 11.7 min, of which 7.2 min pretraining in float32" in (
        sentence
    )
    assert sentence.endswith(
        "(over the 10-minute target): 4.5 rank-1 and 0.0 mAP points from the run above."
    )
    quick = {**slow, "seconds": 420.0}
    assert "10-minute" not in render_demo(main, elsewhere=[quick])
    assert "The same command" not in render_demo(main)
    with pytest.raises(ValueError, match="demo_cpus.*not the README's"):
        render_demo(main, elsewhere=[{**slow, "command": "dclnet demo train.seed=1"}])


def _seeded(record: dict, seed: int) -> dict:
    return {**record, "config": {**record["config"], "train": {"seed": seed}}}


def test_seed_spread_table_and_demo_sentence(tmp_path):
    """The spread table lists each training seed's run and the mean ± sample std; the
    verdict holds only when every demo run beats every CNN run; the demo block gives the
    range of the seeds and whether a two-CPU pair differs by less than it."""
    import json
    import statistics

    from dclnet.reporting.sweeps import render_spread

    first, spread = tmp_path / "first_run", tmp_path / "spread"
    first.mkdir()
    spread.mkdir()
    assert "Not measured yet" in render_spread(first, spread)
    demo = {0: 30.0, 1: 28.0, 2: 33.0}
    cnn = {0: 27.0, 1: 29.0}
    (first / "recipe-seed7.json").write_text(json.dumps(_seeded(_demo_record(demo[0]), 0)))
    for seed in (1, 2):
        path = spread / f"demo-seed7-train{seed}.json"
        path.write_text(json.dumps(_seeded(_demo_record(demo[seed]), seed)))
    for seed, rank1 in cnn.items():
        record = {**_demo_record(0), "mean": {"rank1": rank1, "mAP": 1.0, "mINP": 0.5},
                  "train_seconds": 450.0, "train_seed": seed, "command": f"cnn {seed}"}  # fmt: skip
        name = "cnn-seed7.json" if seed == 0 else f"spread/cnn-seed7-train{seed}.json"
        (first / name if seed == 0 else tmp_path / name).write_text(json.dumps(record))
    table = render_spread(first, spread)
    row = next(x for x in table.splitlines() if x.startswith("| DCLNet demo recipe"))
    sd = statistics.stdev(demo.values())
    assert f"| 0, 1, 2 | 30.00, 28.00, 33.00 (mean 30.33 ± {sd:.2f}) |" in row
    cnn_row = next(x for x in table.splitlines() if x.startswith("| small CNN"))
    assert "7.5 min of training | seed 7, default look | 0, 1 | 27.00, 29.00" in cnn_row
    # 28 (the demo's lowest) is below 29 (the CNN's highest): rank-1 overlaps
    verdict = "seed 7, default look (3 demo runs, 2 CNN runs): every demo run above every "
    assert verdict + "CNN run on mAP, mINP; the runs overlap on rank-1; the demo's mean is " in (
        table
    )
    assert "mean is ahead on rank-1, mAP, mINP." in table  # 30.33 > 28 on rank-1
    # the demo block's sentence: range 28-33, and a pair 1.5 apart is inside it
    from dclnet.reporting import render_demo

    seeds = [_seeded(_demo_record(v), k) for k, v in demo.items()]
    pair = [_demo_record(31.0), {**_demo_record(29.5), "threads": 1}]
    block = render_demo(_demo_record(40.0), pair, seeds)
    assert "training seeds 0, 1, 2 of the recipe" in block and "rank-1 28.00–33.00" in block
    assert "the two float32 runs above differ by less than the seeds do." in block
    pair[1]["dclnet"] = {"mean": {"rank1": 20.0, "mAP": 2.0, "mINP": 1.0}}
    assert "differ by more than the seeds do." in render_demo(_demo_record(40.0), pair, seeds)
    # the CNN in bfloat16 gets its own rows and verdict; an archived recipe's folder takes
    # its seed-0 demo from <recipe>-<set>.json and its seed-0 CNN from the folder itself
    half = {**_demo_record(0), "mean": {"rank1": 40.0, "mAP": 0.5, "mINP": 0.1},
            "train_seconds": 450.0, "train_seed": 0, "command": "cnn --amp bfloat16"}  # fmt: skip
    (spread / "cnn-bf16-seed7-train0.json").write_text(json.dumps(half))
    table = render_spread(first, spread)
    assert "| small CNN in bfloat16, 7.5 min of training | seed 7, default look | 0 | 40.00 |" in (
        table
    )
    assert (
        "seed 7, default look (3 demo runs, 1 bfloat16 CNN run): every demo run above every "
        "bfloat16 CNN run on mAP, mINP; every bfloat16 CNN run above every demo run on "
        "rank-1; the demo's mean is ahead on mAP, mINP and not ahead on rank-1."
    ) in table
    old = tmp_path / "old"
    old.mkdir()
    (first / "recipe-old-seed7.json").write_text(json.dumps(_seeded(_demo_record(25.0), 0)))
    (old / "cnn-seed7-train0.json").write_text(json.dumps({**half, "command": "old cnn"}))
    archived = render_spread(first, old, recipe="recipe-old", cnn_seed0=False)
    assert "| DCLNet demo recipe | seed 7, default look | 0 | 25.00 |" in archived
    assert "`old cnn`" in archived and "`cnn 0`" not in archived


def test_budget_table_lists_the_recipe_then_its_changes_then_the_cnn_by_time(tmp_path):
    import json

    from dclnet.reporting.sweeps import render_budget

    first, budget, spread = tmp_path / "first_run", tmp_path / "budget", tmp_path / "spread"
    for folder in (first, budget, spread):
        folder.mkdir()
    assert "Not measured yet" in render_budget(first, budget, spread)

    def demo(epochs: int, pre: float) -> dict:
        record = _seeded(_demo_record(30.0 + epochs), 0)
        record["config"]["optim"] = {"epochs": epochs}
        extra = "" if epochs == 10 else f" optim.epochs={epochs}"
        command = "dclnet demo model.pretrain_amp=off eval.flip=false data.synthetic_seed=7"
        command += extra
        return {**record, "pretrain_seconds": pre, "command": command}

    def cnn(seconds: float) -> dict:
        mean = {"rank1": seconds / 10, "mAP": 1.0, "mINP": 0.5}
        record = {k: v for k, v in _demo_record(0).items() if k not in ("dclnet", "baseline")}
        return {**record, "mean": mean, "train_seconds": seconds, "command": "cnn"}

    (first / "recipe-fp32-seed7.json").write_text(json.dumps(demo(10, 240.0)))
    (spread / "cnn-seed7-train0.json").write_text(json.dumps(cnn(480.0)))
    (budget / "a.json").write_text(json.dumps(cnn(240.0)))
    (budget / "b.json").write_text(json.dumps(demo(20, 0.0)))
    rows = [x for x in render_budget(first, budget, spread).splitlines() if x.startswith("| ")]
    rows = rows[1:]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| DCLNet demo", "none"],
        ["| DCLNet demo", "`optim.epochs=20`"],
        ["| small CNN", "–"],
        ["| small CNN", "–"],
    ]
    assert "1.0 min, of it 4.0 min pretraining | 40.00 / 2.00 / 1.00 |" in rows[0]
    assert "backbone cached (a first run adds its pretraining)" in rows[1]
    assert rows[2].endswith("| 4.0 min of training | 24.00 / 1.00 / 0.50 |")
    assert rows[3].endswith("| 8.0 min of training | 48.00 / 1.00 / 0.50 |")


def test_tuning_table_lists_the_recipe_then_each_change(tmp_path):
    import dataclasses
    import json

    from dclnet.reporting.common import _demo_recipe
    from dclnet.reporting.sweeps import render_tuning

    assert "Not measured yet" in render_tuning(tmp_path, None)
    now = _demo_recipe()
    today = {"model": dataclasses.asdict(now.model), "optim": dataclasses.asdict(now.optim)}
    recipe = {**_demo_record(30.0), "command": "dclnet demo", "seconds": 240.0, "config": today}
    recipe["pretrain_seconds"] = 120.0
    change = {**_demo_record(35.0), "seconds": 90.0, "pretrain_seconds": 0.0, "config": today}
    change["command"] = "dclnet demo model.pretrain_amp=off data.height=64 data.width=32"
    (tmp_path / "a.json").write_text(json.dumps({**change, "beside": "the test suite"}))
    rows = [x for x in render_tuning(tmp_path, recipe).splitlines() if x.startswith("| ")][1:]
    assert rows == [
        "| none | 4.0 min, of it 2.0 min pretraining | 30.00 / 2.00 / 1.00 |",
        "| `model.pretrain_amp=off data.height=64 data.width=32` | 1.5 min, backbone cached, "
        "another job beside it | 35.00 / 2.00 / 1.00 |",
    ]
    # a record of an earlier recipe: its change to today's says what that recipe set
    then = {
        "model": {**today["model"], "arch": "resnet34"},
        "optim": {**today["optim"], "epochs": 99},
    }
    earlier = {**recipe, "config": then}
    first = render_tuning(tmp_path, earlier).splitlines()[2]
    assert first.startswith("| `model.arch=resnet34 optim.epochs=99` |"), first
    assert now.model.arch != "resnet34" and now.optim.epochs != 99
    # an override today's recipe already holds is no change any more
    held = {**change, "command": f"dclnet demo model.arch={now.model.arch} data.height=64"}
    (tmp_path / "a.json").write_text(json.dumps(held))
    assert render_tuning(tmp_path, None).splitlines()[2].startswith("| `data.height=64` |")


def test_zero_shot_table_gives_each_backbones_mean_and_sets():
    from dclnet.reporting.sweeps import render_zero_shot

    def per_seed(*values):
        return [{"seed": k, "rank1": v, "mAP": v + 5} for k, v in enumerate(values)]

    record = {**_demo_record(0), "command": "python scripts/zero_shot.py", "seeds": [0, 1]}
    record["rows"] = [
        {"variant": "bf16-1000", "amp": "bfloat16", "steps": 1000, "file": "a-bf16-v1.pt",
         "64x32": per_seed(20.0, 30.0), "96x48": per_seed(10.0, 12.0)},
    ]  # fmt: skip
    table = render_zero_shot(record)
    assert "| pretraining (64 × 32) | 64 × 32: rank-1 | mAP | 96 × 48: rank-1 | mAP |" in table
    assert "| 1000 steps, bfloat16 | 25.00 (20.0, 30.0) | 30.00 | 11.00 (10.0, 12.0) | 16.00 |" in (
        table
    )
    assert "synthetic seeds 0, 1 (the tuning sets)" in table and "`a-bf16-v1.pt`" in table


def test_earlier_demo_recipes_say_what_reproduces_them_today():
    import dataclasses

    from dclnet.reporting.common import _demo_recipe, command_note, today_add

    recipe = _demo_recipe()
    now = {"model": dataclasses.asdict(recipe.model), "optim": dataclasses.asdict(recipe.optim)}
    then = {**now["optim"], "epochs": now["optim"]["epochs"] + 3}
    record = {**_demo_record(30.0), "command": "dclnet demo data.synthetic_seed=7",
              "config": {"model": {**now["model"]}, "optim": then}}  # fmt: skip
    assert today_add(record) == f"optim.epochs={then['epochs']}"
    del record["config"]["model"]["pretrain_batch"]  # ran before the setting: 64 images
    added = today_add(record).split()
    assert ("model.pretrain_batch=64" in added) == (now["model"]["pretrain_batch"] != 64)
    assert added[-1] == f"optim.epochs={then['epochs']}"
    assert f"(an earlier demo recipe: today add `{today_add(record)}`)" in command_note(record)
    # an override in the command already says it; other commands and today's recipe: nothing
    record["command"] += f" optim.epochs={then['epochs']}"
    assert "optim.epochs" not in today_add(record)
    assert today_add({**record, "command": "dclnet demo --config tiny"}) == ""
    assert today_add({**_demo_record(1.0), "config": {k: now[k] for k in ("model", "optim")}}) == ""
    assert today_add({"command": "python benchmarks/synthetic_gap.py", "mean": {}}) == ""
    other_arch = "resnet34" if now["model"]["arch"] != "resnet34" else "resnet18"
    model = {**now["model"], "arch": other_arch}
    record = {**_demo_record(30.0), "command": "dclnet demo",
              "config": {"model": model, "optim": now["optim"]}}  # fmt: skip
    assert today_add(record) == f"model.arch={other_arch}"  # another backbone then


def test_first_run_table_takes_the_cnn_from_the_spread_folder(tmp_path):
    import json

    from dclnet.reporting import render_first_run

    folder, spread = tmp_path / "first_run", tmp_path / "spread"
    folder.mkdir(), spread.mkdir()
    record = _first_run_record(30.0, 240.0)
    record["config"]["optim"] = {"epochs": 5}
    record["config"]["model"]["arch"] = "resnet10"
    (folder / "recipe-seed7.json").write_text(json.dumps(record))
    cnn = {**_demo_record(0), "mean": {"rank1": 21.0, "mAP": 3.0, "mINP": 2.0},
           "train_seconds": 480.0, "command": "python benchmarks/synthetic_gap.py"}  # fmt: skip
    other = {**cnn, "mean": {**cnn["mean"], "rank1": 9.0}}
    (spread / "cnn-seed7-train0.json").write_text(json.dumps(cnn))
    (spread / "cnn-seed7-train1.json").write_text(json.dumps(other))
    table = render_first_run(folder, spread)
    assert "| DCLNet demo (`recipe`), ResNet-10, 5 epochs |" in table
    cnn_row = next(x for x in table.splitlines() if "small CNN" in x)
    assert "21.00 / 3.00 / 2.00 | not run |" in cnn_row and "9.00" not in table
