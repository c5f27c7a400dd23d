"""ehr_gru and ehr_transformer: the same embedding and head as ehr_mamba, padding changes nothing, the
transformer's causal option."""

import pytest
import torch

from medssm.layers.events import packed_event_input
from medssm.models import create_model


@pytest.mark.parametrize("name,kwargs", [("ehr_gru", {}), ("ehr_transformer", {}),
                                         ("ehr_transformer", {"causal": True, "pooling": "last"})])
def test_padding_does_not_change_a_prediction(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, in_channels=60, d_model=32, depth=2, **kwargs).eval()
    x = packed_event_input(2, 60, (20,))
    with torch.no_grad():
        both = model(x)
        alone = model(x[1:, :15])
        padded = model(torch.cat([x[1:], torch.zeros(1, 9, 4)], dim=1))
    torch.testing.assert_close(alone[0], both[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[0], both[1], rtol=1e-5, atol=1e-5)


def test_causal_attention_ignores_later_tokens():
    torch.manual_seed(0)
    causal = create_model("ehr_transformer", in_channels=60, d_model=32, depth=1, causal=True).eval()
    x = packed_event_input(1, 60, (10,))
    later = x.clone()
    later[0, 9, 0] = 1 + (later[0, 9, 0] % 58)
    with torch.no_grad():
        first = causal.embed(x)
        mask = torch.ones(1, 10, dtype=torch.bool)
        h, h_later = causal.backbone(first, mask), causal.backbone(causal.embed(later), mask)
    torch.testing.assert_close(h[0, :9], h_later[0, :9])
    assert not torch.allclose(h[0, 9], h_later[0, 9])


def test_same_embedding_and_head_as_ehr_mamba():
    kwargs = {"in_channels": 60, "d_model": 32, "depth": 1}
    names = [{n for n, _ in create_model(m, **kwargs).named_parameters() if n.startswith(("embed.", "head."))}
             for m in ("ehr_mamba", "ehr_gru", "ehr_transformer")]
    assert names[0] == names[1] == names[2] and "embed.code.weight" in names[0]
    with pytest.raises(ValueError, match="divisible by heads"):
        create_model("ehr_transformer", d_model=30, heads=4)
