"""engine/setup: the device choice shared by train, evaluate and predict."""

from __future__ import annotations

import pytest
import torch

from medssm.cli import build_parser
from medssm.engine.setup import pick_device


def test_pick_device_names_what_it_got():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:<index>, got 'gpu'"):
        pick_device("gpu")
    with pytest.raises(ValueError, match="device must be auto"):
        pick_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1' asked for, but no CUDA device is available"):
            pick_device("cuda:1")


@pytest.mark.parametrize("command", ["train --config demo --out x", "evaluate --checkpoint x",
                                     "predict --checkpoint x --input a --output b"])
def test_train_evaluate_and_predict_take_device_and_no_progress(command):
    # issue 26, item 13: evaluate and predict were hard-wired to the CPU and silent
    args = build_parser().parse_args([*command.split(), "--device", "cuda:1", "--no-progress"])
    assert args.device == "cuda:1" and args.no_progress
