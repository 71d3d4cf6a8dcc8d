"""The plain attention used for CPU training against the fused kernel: same values and gradients in float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from groupvit.model.layers import attention


@pytest.mark.parametrize("causal", [False, True])
def test_training_attention_matches_the_fused_kernel(causal: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, generator=g, requires_grad=True) for _ in range(3))
    out = attention(q, k, v, causal=causal)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    ref_inputs = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_inputs, is_causal=causal)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, (t.grad for t in ref_inputs), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_training_attention_keeps_float32_scores_under_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g).bfloat16().requires_grad_(True) for _ in range(3))
    with torch.autocast("cpu", torch.bfloat16):
        out = attention(q, k, v)
    weights = ((q.float() @ k.float().transpose(-2, -1)) * 0.5).softmax(-1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, (weights.bfloat16() @ v), atol=0, rtol=0)
