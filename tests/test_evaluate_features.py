"""`dclnet evaluate-features`: the protocol runner on a synthetic SYSU/RegDB tree on disk."""

import json

import numpy as np
import pytest

from dclnet.cli import main
from dclnet.data.sources.synthetic import write_regdb, write_sysu
from dclnet.data.splits import ProtocolSettings, build_splits, needed_paths
from dclnet.evaluation.protocols import METRIC_KEYS, save_features_npz


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    return write_sysu(tmp_path_factory.mktemp("sysu"), num_ids=12, height=32, width=16)


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("regdb")
    return write_regdb(root, num_ids=8, height=32, width=16, images_per_modality=3)


def _identity_features(paths, labels, dim=64, noise=0.0, seed=0):
    """One-hot identity features (perfect retrieval), optionally noisy, L2-normalised."""
    rng = np.random.default_rng(seed)
    feats = np.zeros((len(paths), dim), dtype=np.float32)
    feats[np.arange(len(paths)), np.asarray(labels) % dim] = 1.0
    feats += noise * rng.standard_normal(feats.shape).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def _all_records(settings, root):
    splits = build_splits(settings, root)
    by_path = {r.path: r for s in splits for r in (*s.query, *s.gallery)}
    paths = needed_paths(splits)
    return paths, [by_path[p].label for p in paths]


def test_perfect_features_give_100_and_json_shape(sysu_root, tmp_path, capsys):
    paths, labels = _all_records(ProtocolSettings("sysu", trials=3), sysu_root)
    save_features_npz(tmp_path / "f.npz", paths, _identity_features(paths, labels))
    out = tmp_path / "r.json"
    args = [
        "evaluate-features",
        "--dataset",
        "sysu",
        "--root",
        str(sysu_root),
        "--features",
        str(tmp_path / "f.npz"),
        "--trials",
        "3",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"protocol", "trials", "mean", "std"}
    assert data["protocol"]["dataset"] == "sysu" and data["protocol"]["trials"] == 3
    assert len(data["trials"]) == 3
    for key in METRIC_KEYS:
        assert data["mean"][key] == pytest.approx(100.0)
        assert data["std"][key] == pytest.approx(0.0)
    assert "mean" in capsys.readouterr().out


def test_noisy_features_are_below_perfect_and_rerank_reported_separately(sysu_root, tmp_path):
    paths, labels = _all_records(ProtocolSettings("sysu", trials=2), sysu_root)
    feats = _identity_features(paths, labels, noise=0.6, seed=1)
    save_features_npz(tmp_path / "f.npz", paths, feats)
    out = tmp_path / "r.json"
    args = [
        "evaluate-features",
        "--dataset",
        "sysu",
        "--root",
        str(sysu_root),
        "--features",
        str(tmp_path / "f.npz"),
        "--trials",
        "2",
        "--rerank",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert 0.0 < data["mean"]["mAP"] < 100.0
    assert set(data["reranked"]) == {"trials", "mean", "std"}


def test_extra_rows_are_ignored_and_order_does_not_matter(sysu_root, tmp_path):
    paths, labels = _all_records(ProtocolSettings("sysu", trials=2), sysu_root)
    feats = _identity_features(paths, labels, noise=0.5, seed=3)
    perm = np.random.default_rng(0).permutation(len(paths))
    save_features_npz(tmp_path / "a.npz", paths, feats)
    save_features_npz(
        tmp_path / "b.npz",
        [paths[i] for i in perm] + ["extra/x.jpg"],
        np.concatenate([feats[perm], feats[:1]]),
    )
    results = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        main(
            [
                "evaluate-features",
                "--dataset",
                "sysu",
                "--root",
                str(sysu_root),
                "--features",
                str(tmp_path / f"{name}.npz"),
                "--trials",
                "2",
                "--json",
                str(out),
            ]
        )
        results.append(json.loads(out.read_text()))
    assert results[0]["trials"] == results[1]["trials"]


def test_regdb_both_directions(regdb_root, tmp_path):
    for direction in ("v2t", "t2v"):
        settings = ProtocolSettings("regdb", trial=2, direction=direction)
        paths, labels = _all_records(settings, regdb_root)
        save_features_npz(tmp_path / "f.npz", paths, _identity_features(paths, labels))
        out = tmp_path / f"{direction}.json"
        code = main(
            [
                "evaluate-features",
                "--dataset",
                "regdb",
                "--root",
                str(regdb_root),
                "--features",
                str(tmp_path / "f.npz"),
                "--trial",
                "2",
                "--direction",
                direction,
                "--json",
                str(out),
            ]
        )
        assert code == 0
        data = json.loads(out.read_text())
        assert data["protocol"] == {"dataset": "regdb", "trial": 2, "direction": direction}
        assert data["mean"]["rank1"] == pytest.approx(100.0)


def _run_error(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_missing_duplicate_and_bad_shape_errors(sysu_root, tmp_path, capsys):
    paths, labels = _all_records(ProtocolSettings("sysu", trials=1), sysu_root)
    feats = _identity_features(paths, labels)
    base = [
        "evaluate-features",
        "--dataset",
        "sysu",
        "--root",
        str(sysu_root),
        "--trials",
        "1",
        "--features",
        str(tmp_path / "f.npz"),
    ]
    save_features_npz(tmp_path / "f.npz", paths[1:], feats[1:])
    assert repr(paths[0]) in _run_error(base, capsys)
    save_features_npz(tmp_path / "f.npz", paths + [paths[3]], np.concatenate([feats, feats[3:4]]))
    assert "duplicate path" in _run_error(base, capsys) and paths[3] in _run_error(base, capsys)
    np.savez(tmp_path / "f.npz", paths=np.array(paths), features=feats[:-1])
    assert "rows" in _run_error(base, capsys)
    np.savez(tmp_path / "f.npz", paths=np.array(paths), features=feats[:, :, None])
    assert "2-D" in _run_error(base, capsys)
    np.savez(tmp_path / "f.npz", feats=feats)
    assert "'paths'" in _run_error(base, capsys)
    assert "does not exist" in _run_error([*base[:-1], str(tmp_path / "none.npz")], capsys)


def test_wrong_root_and_regdb_without_trial(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", paths=np.array(["a"]), features=np.zeros((1, 2)))
    msg = _run_error(
        [
            "evaluate-features",
            "--dataset",
            "sysu",
            "--root",
            str(tmp_path / "no"),
            "--features",
            str(tmp_path / "f.npz"),
        ],
        capsys,
    )
    assert str(tmp_path / "no") in msg
    msg = _run_error(
        [
            "evaluate-features",
            "--dataset",
            "regdb",
            "--root",
            str(tmp_path),
            "--features",
            str(tmp_path / "f.npz"),
        ],
        capsys,
    )
    assert "--trial" in msg
