"""Config schema: defaults → YAML → overrides, with one-line validation errors."""

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


@pytest.mark.parametrize("name", ["demo", "study", "tiny", "sysu", "regdb", "llcm"])
def test_bundled_recipes_load(name):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    assert isinstance(cfg, Config)


def test_bare_off_is_the_off_choice_not_a_bool():
    # YAML 1.1 reads `off` as False; train.amp has an "off" choice, so it means that
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="data.dataset"):
        load_config(None, ["data.dataset=off"])  # no "off" choice there: still an error
