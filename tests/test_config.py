"""Config schema: defaults → YAML → overrides, with one-line validation errors."""

import itertools
from pathlib import Path

import pytest

from dclnet.config import Config, from_dict, load_config, parse_override, save_config, to_dict
from dclnet.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs"


def test_defaults_are_the_paper_recipe():
    cfg = Config()
    assert cfg.model.arch == "resnet50" and cfg.model.split == 2
    assert (cfg.data.height, cfg.data.width) == (288, 144)
    assert (cfg.data.num_ids, cfg.data.num_instances) == (8, 4)
    assert cfg.optim.lr == 3.5e-3 and cfg.optim.backbone_lr_mult == 0.1
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.milestones == (15, 27)
    assert cfg.loss.tau == 0.05 and cfg.loss.metric_loss == "center_cluster" and cfg.loss.srm


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  epochs: 7\n  milestones: [3, 5]\nmodel:\n  arch: resnet18\n")
    cfg = load_config(path, ["optim.epochs=9", "loss.preset=baseline", "model.pretrained=null"])
    assert cfg.optim.epochs == 9 and cfg.optim.milestones == (3, 5)
    assert cfg.model.arch == "resnet18" and cfg.model.pretrained is None
    assert cfg.loss.preset == "baseline"


def test_roundtrip_through_yaml(tmp_path):
    cfg = load_config(None, ["optim.lr=0.01", "augment.erase_area=[0.1, 0.2]"])
    save_config(cfg, tmp_path / "r.yaml")
    again = load_config(tmp_path / "r.yaml")
    assert again == cfg and to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.arch=resnet99", "model.arch"),
        ("model.archh=resnet18", "unknown config key 'model.archh'"),
        ("nope.x=1", "unknown config key 'nope'"),
        ("optim.epochs=ten", "optim.epochs"),
        ("model.split=5", "out of range"),
        ("loss.dcl_masks=boxes", "valid: pap, stripes"),
        ("optim.epochs", "section.key=value"),
        ("epochs=3", "section.key"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, [override])


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="optim.epochs"):
        from_dict({"optim": {"epochs": True}})


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_parse_override_yaml_values():
    assert parse_override("optim.milestones=[1,2]") == {"optim": {"milestones": [1, 2]}}
    assert parse_override("model.pretrained=null") == {"model": {"pretrained": None}}


def test_every_bundled_recipe_is_tested():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(
        [*PAPER_RECIPES, "demo", "study", "study96", "tiny"]
    )


# The paper recipe as docs/method.md §1, §3 and §8 state it.
PAPER_RECIPES = {"sysu": "sysu", "regdb": "fraction", "llcm": "fraction"}


@pytest.mark.parametrize(("name", "validation"), sorted(PAPER_RECIPES.items()))
def test_paper_recipes_follow_method_md(name, validation):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    assert cfg.data.dataset == name
    assert (cfg.model.arch, cfg.model.pretrained, cfg.model.split) == ("resnet50", "imagenet", 2)
    assert cfg.model.layer3_stride == 2  # final map 18 x 9 for 288 x 144
    assert (cfg.data.height, cfg.data.width) == (288, 144)  # §1 input size
    assert (cfg.data.num_ids, cfg.data.num_instances) == (8, 4)  # §1: 2PK = 64 images a step
    o = cfg.optim
    assert (o.optimizer, o.lr, o.backbone_lr_mult, o.weight_decay) == ("adam", 3.5e-3, 0.1, 5e-4)
    assert (o.epochs, o.warmup_epochs, o.milestones, o.gamma) == (40, 5, (15, 27), 0.1)
    assert cfg.loss.preset is None and cfg.loss.srm and cfg.loss.dcl_masks == "pap"
    assert (cfg.loss.tau, cfg.loss.metric_loss) == (0.05, "center_cluster")
    assert cfg.train.amp == "auto"  # mixed precision where supported
    assert cfg.train.validation == validation  # best.pt from held-out training ids only
    assert cfg.eval.trials == 10


@pytest.mark.parametrize(
    ("name", "size", "arch"),
    [("demo", (96, 48), "resnet10"), ("study", (192, 96), "resnet18"),
     ("study96", (96, 48), "resnet18")],
)  # fmt: skip
def test_cpu_recipes_match_their_headers(name, size, arch):
    # "ResNet-10 / -18 at 96 x 48 / 192 x 96 ... model.pretrained=synthetic" (their comments)
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    lines = (CONFIG_DIR / f"{name}.yaml").read_text().splitlines()
    header = " ".join(x for x in itertools.takewhile(lambda x: x.startswith("#"), lines))
    assert f"ResNet-{arch.removeprefix('resnet')} " in header
    assert cfg.data.dataset == "synthetic"
    assert (cfg.model.arch, cfg.model.pretrained) == (arch, "synthetic")
    assert (cfg.data.height, cfg.data.width) == size
    assert cfg.train.amp == "off"  # CPU: no autocast
    assert max(cfg.optim.milestones) < cfg.optim.epochs  # every decay step happens
    if name.startswith("study"):
        assert cfg.loss.preset is None  # presets come per run
        # the study's backbone is pinned: the demo's pretraining may change, the study's not
        m = cfg.model
        assert (m.pretrain_size, m.pretrain_steps, m.pretrain_ids) == ((96, 48), 1500, 512)
        assert (m.pretrain_shift, m.pretrain_parts, m.pretrain_local) == (0, 0.0, 0.0)
    if name == "study":
        assert cfg.data.synthetic_seed == 5  # a population nothing was tuned on


def test_tiny_recipe_is_a_smoke_test():
    cfg = load_config(CONFIG_DIR / "tiny.yaml")
    assert (cfg.model.arch, cfg.model.pretrained) == ("resnet18", None)  # nothing downloaded
    assert (cfg.data.height, cfg.data.width) == (64, 32)
    assert cfg.data.synthetic_ids == 16 and cfg.optim.epochs == 2 and cfg.eval.trials == 2
    assert cfg.train.amp == "off"


def test_bare_off_is_the_off_choice_not_a_bool():
    # YAML 1.1 reads `off` as False; train.amp has an "off" choice, so it means that
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="data.dataset"):
        load_config(None, ["data.dataset=off"])  # no "off" choice there: still an error


def test_removed_keys_of_older_files_load_with_a_warning(tmp_path, caplog):
    # run folders written before data.synthetic_height/width were removed still resume
    old = tmp_path / "config.yaml"
    old.write_text("data:\n  synthetic_ids: 20\n  synthetic_height: 128\n  synthetic_width: 64\n")
    with caplog.at_level("WARNING", logger="dclnet.config_load"):
        cfg = load_config(old)
    assert cfg.data.synthetic_ids == 20
    assert "data.synthetic_height" in caplog.text and "data.height x data.width" in caplog.text
    assert not hasattr(cfg.data, "synthetic_height")
    assert "synthetic_height" not in to_dict(cfg)["data"]  # and new files no longer hold them
    with pytest.raises(ConfigError, match="unknown config key 'data.synthetic_depth'"):
        load_config(None, ["data.synthetic_depth=3"])  # any other unknown key is still an error


def test_a_folder_named_like_a_recipe_does_not_hide_it(tmp_path, monkeypatch):
    from dclnet.cli_commands import resolve_config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # e.g. a run folder called "tiny"
    assert resolve_config_path("tiny") == CONFIG_DIR / "tiny.yaml"
    (tmp_path / "mine.yaml").write_text("optim:\n  epochs: 3\n")
    assert resolve_config_path("mine.yaml") == Path("mine.yaml")


def test_loading_and_key_names_import_from_the_schema_module():
    """``dclnet.config`` re-exports the public names of config_load and config_keys."""
    import subprocess
    import sys

    from dclnet import config, config_keys, config_load

    for name in ("check_device", "check_protocol", "check_saved", "from_dict", "load_config"):
        assert getattr(config, name) is getattr(config_load, name), name
    for name in ("parse_override", "save_config", "saved_config", "to_dict"):
        assert getattr(config, name) is getattr(config_load, name), name
    for name in ("KeyInfo", "describe_keys", "format_keys"):
        assert getattr(config, name) is getattr(config_keys, name), name
    assert {"load_config", "format_keys", "Config"} <= set(dir(config))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        config.no_such_name  # noqa: B018
    # either module imports first in a fresh interpreter (no import cycle with the schema)
    for module in ("dclnet.config_load", "dclnet.config_keys"):
        code = f"import {module}; from dclnet.config import load_config, format_keys"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
