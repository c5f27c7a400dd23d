from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medssm.engine.config import apply_overrides, config_from_dict, load_config, save_config

SHIPPED = sorted((Path(__file__).parents[2] / "src" / "medssm" / "configs").glob("*.yaml"))


def test_defaults_overrides_and_round_trip(tmp_path):
    config = load_config(None, ["train.max_steps=5", "train.lr=3e-4", "model.args.features=[8, 16]",
                                "inference.roi_size=null", "train.amp=bf16"])
    assert config.train.max_steps == 5 and config.train.lr == 3e-4 and config.train.amp == "bf16"
    assert config.model.args == {"features": [8, 16]}
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.model.name and config.data.name


@pytest.mark.parametrize("raw,message", [
    ({"trian": {}}, "unknown section\\(s\\) \\['trian'\\]"),
    ({"train": {"max_step": 3}}, "unknown key\\(s\\) \\['max_step'\\] in section 'train'"),
    ({"train": {}}, "exactly one of train.max_steps and train.epochs"),
    ({"train": {"max_steps": 3, "epochs": 2}}, "exactly one of"),
    ({"train": {"max_steps": 0}}, "train.max_steps must be a positive integer"),
    ({"train": {"max_steps": 3, "amp": "fp8"}}, "train.amp must be one of"),
    ({"train": {"max_steps": 3, "batch_size": 0}}, "train.batch_size must be >= 1"),
    ({"train": {"max_steps": 3}, "transforms": {"modality": "pet"}}, "transforms.modality must be one of"),
    ({"train": {"max_steps": 3}, "inference": {"overlap": 1.0}}, "inference.overlap must be in"),
    ({"train": 3}, "section 'train' must be a mapping"),
    ({"train": {"max_steps": 2.5}}, "train.max_steps must be int \\| None, got 2.5"),
    ({"train": {"max_steps": 3, "lr": "fast"}}, "train.lr must be float, got 'fast'"),
    ({"train": {"max_steps": 3, "tta": 1}}, "unknown key"),
    ({"train": {"max_steps": 3}, "inference": {"tta": "yes"}}, "inference.tta must be bool"),
    ({"train": {"max_steps": 3}, "transforms": {"patch_size": [64, "a"]}}, "transforms.patch_size must be"),
    ({"train": {"max_steps": 3}, "model": {"args": [1]}}, "model.args must be dict"),
])
def test_bad_configs_name_the_problem(raw, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(raw, "cfg.yaml")


def test_bad_overrides_and_files(tmp_path):
    with pytest.raises(ValueError, match="must look like section.key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ValueError, match="must look like"):
        apply_overrides({}, ["train..lr=1"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    raw = apply_overrides({"data": {"args": 3}}, ["data.args.root=/x"])
    assert raw == {"data": {"args": {"root": "/x"}}}
    assert yaml.safe_load("a: 1e-3")["a"] == "1e-3"  # YAML 1.1 reads this as a string...
    (tmp_path / "lr.yaml").write_text("train: {max_steps: 2, lr: 1e-3}\n")
    assert load_config(tmp_path / "lr.yaml").train.lr == 1e-3  # ...which the config converts


REPO = Path(__file__).resolve().parents[2]
REAL_DATA = {"breastmnist": "medmnist/breastmnist.npz", "ecg200": "ecg/ucr_ecg200", "drive": "drive/training",
             "mitbih_beats": "ecg/mitdb_wfdb_sample",
             "mitbih_stream": "ecg/mitdb_wfdb_sample", "duke_oct": "restoration/duke_oct_bioptigen"}


@pytest.mark.parametrize("name", sorted(REAL_DATA))
def test_real_data_configs_build_their_splits(name, monkeypatch):
    """The shipped configs point at ../shared/data relative to the repository root."""
    from medssm.data import build_dataset

    if not (REPO.parent / "shared" / "data" / REAL_DATA[name]).exists():
        pytest.skip("shared real data not present")
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / f"{name}.yaml")
    sizes = {}
    for split in (config.data.train_split, config.data.val_split):
        sizes[split] = len(build_dataset(config.data.name, split=split, **config.data.args))
    assert min(sizes.values()) > 0, sizes


def test_drive_test_folder_overrides_from_the_config_comment(monkeypatch):
    from medssm.data import build_dataset

    if not (REPO.parent / "shared" / "data" / "drive" / "test").exists():
        pytest.skip("shared real data not present")
    monkeypatch.chdir(REPO)
    overrides = ["data.args.root=../shared/data/drive/test", "data.args.image_suffix=_test",
                 "data.args.fov_suffix=_test_mask", "data.args.val_fraction=0", "data.args.test_fraction=1"]
    assert all(o.split("=")[0] in (REPO / "configs" / "drive.yaml").read_text() for o in overrides)
    config = load_config(REPO / "configs" / "drive.yaml", overrides)
    test = build_dataset(config.data.name, split="test", **config.data.args)
    assert len(test) == 20 and test[0]["fov"].shape == (1, 584, 565)


def test_an_override_of_steps_or_epochs_clears_the_other(tmp_path):
    # issue 26, defect 1: `train.max_steps=2` on a config given in epochs used to fail validation
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 100\n")
    config = load_config(path, ["train.max_steps=2"])
    assert (config.train.max_steps, config.train.epochs) == (2, None)
    path.write_text("train:\n  max_steps: 100\n")
    config = load_config(path, ["train.epochs=3"])
    assert (config.train.max_steps, config.train.epochs) == (None, 3)
    with pytest.raises(ValueError, match="exactly one of train.max_steps and train.epochs"):
        load_config(path, ["train.epochs=3", "train.max_steps=4"])  # both given on the command line


def test_a_bad_override_is_reported_as_the_command_line(tmp_path):
    # issue 26, defect 2: the error named the config file although the value came from the command line
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 10\n  lr: 0.1\n")
    with pytest.raises(ValueError, match=r"command-line override 'train.lr=abc': train.lr must be float"):
        load_config(path, ["train.lr=abc"])
    path.write_text("train:\n  max_steps: 10\n  lr: abc\n")
    with pytest.raises(ValueError, match=rf"{path}: train.lr must be float"):
        load_config(path)
