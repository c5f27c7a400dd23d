"""Event-token blocks: the input check, padding trimmed exactly, the embedding zero at padding, pooling."""

import pytest
import torch

from medssm.layers.events import (
    ClassificationHead,
    EventEmbedding,
    check_events,
    packed_event_input,
    pool,
    trim_padding,
)


def test_check_events_wants_packed_right_padded_tokens():
    x = packed_event_input(4, 50, (12,))
    mask = check_events(x)
    assert mask[0].all() and mask[1, :9].all() and not mask[1, 9:].any()
    with pytest.raises(ValueError, match="packed tokens"):
        check_events(torch.zeros(2, 5))
    left = x.clone()
    left[0, 0] = 0
    with pytest.raises(ValueError, match="padded at the end"):
        check_events(left)


def test_trim_padding_drops_only_columns_that_are_padding_everywhere():
    x = packed_event_input(2, 50, (12,))
    x[0, 10:] = 0
    trimmed, mask = trim_padding(x)
    assert trimmed.shape == (2, 10, 4) and torch.equal(trimmed, x[:, :10]) and mask.sum().item() == 10 + 9
    assert trim_padding(torch.zeros(1, 3, 4))[0].shape == (1, 1, 4)


def test_embedding_is_zero_at_padding_and_checks_codes():
    torch.manual_seed(0)
    embed = EventEmbedding(50, 16, use_values=True).eval()
    x = packed_event_input(2, 50, (8,))
    y = embed(x)
    assert y.shape == (2, 8, 16) and (y[1, 6:] == 0).all() and (y[0].abs().sum(-1) > 0).all()
    moved = x.clone()
    moved[0, :, 2] += 5.0  # other times change the embedding
    assert not torch.allclose(embed(moved)[0], y[0])
    bad = x.clone()
    bad[0, 0, 0] = 50
    with pytest.raises(ValueError, match="event codes must lie in \\[0, 50\\)"):
        embed(bad)
    bad = x.clone()
    bad[0, 0, 1] = 7
    with pytest.raises(ValueError, match="token types must lie in"):
        embed(bad)


def test_pooling_against_a_loop():
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    last = pool(hidden, mask, "last")
    mean = pool(hidden, mask, "mean")
    for b, n in enumerate((5, 2, 1)):
        torch.testing.assert_close(last[b], hidden[b, n - 1])
        torch.testing.assert_close(mean[b], hidden[b, :n].mean(0))
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool(hidden, mask, "max")
    assert ClassificationHead(4, 3)(last).shape == (3, 3)
