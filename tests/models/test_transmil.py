"""transmil: any bag size, patch bags, PPEG on the squared bag, Nystrom attention against exact attention, and
class-token scores that fold an instance's grid copies."""

import pytest
import torch
from mil_checks import check_bags_of_any_size, check_patch_bags

from medssm.models import create_model
from medssm.models.transmil import NystromAttention, iterative_pinv


@pytest.mark.parametrize("attention", ["nystrom", "exact"])
def test_bags_of_any_size_and_patches(attention):
    check_bags_of_any_size("transmil", attention=attention)
    check_patch_bags("transmil", attention=attention)


def test_iterative_pinv_inverts_a_softmax_matrix():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(2, 16, 16), -1)
    torch.testing.assert_close(iterative_pinv(a, 30) @ a, torch.eye(16).expand(2, 16, 16), atol=1e-3, rtol=0)


def test_nystrom_approximates_exact_attention_and_is_exact_up_to_the_landmark_count():
    torch.manual_seed(0)
    nystrom = NystromAttention(16, heads=2, dim_head=8, landmarks=8, dropout=0.0).eval()
    exact = NystromAttention(16, heads=2, dim_head=8, landmarks=8, dropout=0.0, attention="exact").eval()
    exact.load_state_dict(nystrom.state_dict())
    short = torch.randn(1, 8, 16)
    torch.testing.assert_close(nystrom(short), exact(short))  # n <= landmarks: exact attention
    # smooth tokens (a slowly varying sequence): the landmark means summarise them well
    long = torch.cumsum(torch.randn(1, 64, 16) * 0.1, dim=1)
    error = (nystrom(long) - exact(long)).norm() / exact(long).norm()
    assert error < 0.1
    out, row = exact(long, return_first_row=True)
    torch.testing.assert_close(row.sum(-1), torch.ones(1))


@torch.no_grad()
def test_instance_scores_fold_the_grid_copies_of_an_instance():
    torch.manual_seed(0)
    model = create_model("transmil", attention="exact").eval()
    x = torch.randn(1, 5, 512)  # a 3x3 grid: instances 0..4, then copies of instances 0..3
    _, scores = model(x, return_instance_scores=True)
    h = model.project(x)
    h = torch.cat([model.cls_token, h, h[:, :4]], dim=1)
    _, row = model.layer2(model.pos_layer(model.layer1(h), 3), return_first_row=True)  # (1, 10): cls, 9 cells
    expected = torch.cat([row[:, 1:5] + row[:, 6:10], row[:, 5:6]], dim=1)
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(scores.sum() + row[0, 0], torch.tensor(1.0))  # exact rows sum to one
