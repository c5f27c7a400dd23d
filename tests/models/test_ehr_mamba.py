"""ehr_mamba: padding and batch companions change nothing, ssm=False drops the scan, several heads and their
loss, the paper-sized stack."""

import pytest
import torch

from medssm.layers.events import packed_event_input
from medssm.models import count_parameters, create_model
from medssm.models.ehr_mamba import multitask_loss, paper_size_parameters


def _model(**kwargs):
    torch.manual_seed(0)
    return create_model("ehr_mamba", in_channels=60, d_model=32, depth=2, **kwargs).eval()


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_and_other_samples_do_not_change_a_prediction(pooling):
    model = _model(pooling=pooling)
    torch.manual_seed(1)
    x = packed_event_input(2, 60, (20,))  # sample 1 has 5 padded positions
    with torch.no_grad():
        both = model(x)
        alone = model(x[1:, :15])
        padded = model(torch.cat([x[1:], torch.zeros(1, 30, 4)], dim=1))
    torch.testing.assert_close(alone[0], both[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[0], both[1], rtol=1e-5, atol=1e-5)
    changed = x.clone()
    changed[1, 3, 0] = 1 + (changed[1, 3, 0] % 58)  # another code at a real position
    with torch.no_grad():
        assert not torch.allclose(model(changed)[1], both[1])


def test_ssm_false_removes_the_scan():
    full, control = _model(), _model(ssm=False)
    names = [n for n, _ in control.named_parameters()]
    assert not any(n.endswith(("A_log", "D", "dt_proj.weight")) for n in names)
    assert any(n.endswith("A_log") for n, _ in full.named_parameters())
    assert count_parameters(control) < count_parameters(full)
    assert control(packed_event_input(2, 60, (10,))).shape == (2, 2)


def test_task_heads_and_the_multitask_loss():
    model = _model(tasks={"los": 1, "sofa_high": 2}).train()
    x = packed_event_input(4, 60, (16,))
    outputs = model.forward_tasks(x)
    model.eval()  # dropout off: forward(all_heads=True) is forward_tasks, forward the main head
    for name, value in model(x, all_heads=True).items():
        torch.testing.assert_close(value, model.forward_tasks(x)[name])
    torch.testing.assert_close(model(x), model.forward_tasks(x)["main"])
    model.train()
    assert outputs["main"].shape == (4, 2) and outputs["los"].shape == (4, 1) and outputs["sofa_high"].shape == (4, 2)
    death = torch.tensor([0, 1, 0, 1])
    los = torch.tensor([3.0, float("nan"), 10.0, 5.0])
    loss = multitask_loss(outputs, {"main": death, "los": los}, weights={"los": 0.5})
    known = ~torch.isnan(los)
    expected = torch.nn.functional.cross_entropy(outputs["main"], death) + 0.5 * torch.nn.functional.mse_loss(
        outputs["los"][known, 0], los[known])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.task_heads["los"].out_proj.weight.grad is not None
    assert model.task_heads["sofa_high"].out_proj.weight.grad is None  # no target, no gradient
    nothing = multitask_loss(outputs, {"los": torch.full((4,), float("nan"))})
    assert nothing.item() == 0
    with pytest.raises(ValueError, match="no head 'saps'"):
        multitask_loss(outputs, {"saps": los})
    with pytest.raises(ValueError, match="tasks must map names"):
        _model(tasks={"main": 2})


def test_a_few_steps_learn_a_code_that_decides_the_label():
    torch.manual_seed(0)
    model = create_model("ehr_mamba", in_channels=30, d_model=32, depth=1, dropout=0.0)
    x = packed_event_input(32, 30, (12,))
    y = torch.randint(0, 2, (32,))
    x[:, 3, 0] = torch.where(y == 1, 28.0, 29.0)  # the label is one token among the events
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_paper_size():
    assert 90_000_000 < paper_size_parameters() < 160_000_000
