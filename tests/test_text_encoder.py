"""The text tower encodes distinct rows once, grouped by length, with the padded batch's result."""

import torch

from groupvit.config import TextConfig
from groupvit.model.text import TextEncoder, length_buckets

EOT = 49407


def _tokens() -> torch.Tensor:
    """12 rows of lengths 2..20 (some repeated), zero-padded to 24 positions."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for length in (2, 3, 3, 20, 5, 2, 17, 3, 9, 9, 20, 4):
        row = torch.zeros(24, dtype=torch.long)
        row[0] = 49406
        row[1:length - 1] = torch.randint(1, 400, (length - 2,), generator=gen)
        row[length - 1] = EOT
        rows.append(row)
    tokens = torch.stack(rows)
    tokens[5] = tokens[0]  # duplicates
    tokens[10] = tokens[3]
    return tokens


def test_length_buckets_hand_computed() -> None:
    assert length_buckets([2, 2, 3, 9, 9], max_buckets=2, overhead=0) == [3, 5]
    # One group: 5 * 9 = 45 tokens; two: 27 + 100 overhead.
    assert length_buckets([2, 2, 3, 9, 9], max_buckets=3, overhead=100) == [5]
    assert length_buckets([5]) == [1]
    assert length_buckets([1, 1, 1, 1, 30, 30], max_buckets=3, overhead=0) == [4, 6]


def test_forward_matches_padded_batch_values_and_gradients() -> None:
    torch.manual_seed(0)
    cfg = TextConfig(width=32, heads=2, layers=2, context_length=24)
    encoder = TextEncoder(cfg).double()  # float64: the comparison sees the algorithm, not rounding
    tokens = _tokens()
    weights = torch.randn(tokens.shape[0], cfg.width, dtype=torch.float64)

    out = encoder(tokens)
    (out * weights).sum().backward()
    grads = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad()

    eot = tokens.argmax(dim=-1)
    padded = encoder.pool(tokens[:, :int(eot.max()) + 1], eot)
    (padded * weights).sum().backward()

    torch.testing.assert_close(out, padded, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, (p.grad for p in encoder.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert torch.equal(out[5], out[0]) and torch.equal(out[10], out[3])


def test_forward_of_no_rows() -> None:
    encoder = TextEncoder(TextConfig(width=32, heads=2, layers=1, context_length=24))
    assert encoder(torch.zeros(0, 24, dtype=torch.long)).shape == (0, 32)
