"""The training conventions that differ between the paper, Flow-GRPO's code and flowopd, each selectable by name."""

import torch

from flowopd.mini.model import MiniBackbone
from flowopd.sampling import guided_velocity


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in model.transformer.parameters()])


def test_detached_unconditional_branch_gives_only_the_conditional_gradient():
    """With v = v_u + s (v_c - v_u): d/dθ <w, v> = s d<w, v_c> + (1 - s) d<w, v_u>; detaching v_u keeps only s d<w, v_c>."""
    torch.manual_seed(0)
    model = MiniBackbone.random(seed=0)
    torch.nn.init.normal_(model.transformer.proj_out.weight, std=0.02)  # the zero init would leave every gradient but one at 0
    x = torch.randn(2, 3, 32, 32)
    sigma = torch.tensor(0.6)
    with torch.no_grad():
        cond, uncond = model.encode_prompts(["a photo of a red square"] * 2), model.encode_prompts([""] * 2)
    w = torch.randn(2, 3, 32, 32)
    s = 3.0

    v_full = guided_velocity(model, x, sigma, cond, uncond, s)
    v_det = guided_velocity(model, x, sigma, cond, uncond, s, detach_uncond=True)
    torch.testing.assert_close(v_det, v_full, atol=1e-5, rtol=1e-5)  # the same velocity, only the gradient differs
    g_full, g_det = _grads(model, (w * v_full).sum()), _grads(model, (w * v_det).sum())
    g_cond = _grads(model, (w * model.velocity(x, sigma, cond)).sum())
    g_uncond = _grads(model, (w * model.velocity(x, sigma, uncond)).sum())
    tol = 1e-4 * float(g_full.abs().max())  # float32 sums in another order
    torch.testing.assert_close(g_det, s * g_cond, atol=tol, rtol=1e-3)
    torch.testing.assert_close(g_full, s * g_cond + (1 - s) * g_uncond, atol=tol, rtol=1e-3)
    assert (g_full - g_det).abs().max() > 1e-4  # the two conventions really differ
