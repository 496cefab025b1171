"""Muon for the weight matrices of the transformer blocks, AdamW for everything else.

Muon (Keller Jordan, modded-nanogpt; nanochat) keeps SGD's Nesterov momentum but replaces each
matrix's update by the nearest semi-orthogonal matrix U V^T (G = U S V^T): every direction the
gradient points in moves the weights by the same amount, instead of a few dominant directions
taking all of the step. Embeddings, the LM head, norms and biases are not matrices in that sense
(one row per token, or vectors) and stay with AdamW.

The orthogonalisation is 5 Polar Express iterations (Amsel et al. 2025, nanochat's coefficients):
only matrix products, no SVD. The update is scaled to an RMS of 0.2 per element, the size of an
AdamW update (Moonlight, Liu et al. 2025), so one learning rate and weight decay serve both parts
and the schedule in the training loop scales them together.
"""

from __future__ import annotations

import torch

from ..device import native_bf16

# (a, b, c) of X <- a X + (b A + c A^2) X with A = X X^T; each iteration pushes the singular values
# towards 1 (computed for 5 iterations, from nanochat/optim.py)
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]
UPDATE_RMS = 0.2


def orthogonalize(g: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """About U V^T of g = U S V^T (singular values within ~15% of 1), computed in `dtype` (default
    g's); g may be a stack of matrices of one shape (..., m, n), each orthogonalised on its own."""
    x = g / (g.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)  # singular values <= 1: the iteration converges
    x = x.to(dtype or g.dtype)
    wide = x.size(-2) <= x.size(-1)
    if not wide:  # X X^T is then the smaller product
        x = x.mT
    for a, b, c in POLAR_EXPRESS:
        A = x @ x.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c) if A.dim() == 3 else torch.addmm(A, A, A, beta=b, alpha=c)
        x = torch.baddbmm(x, B, x, beta=a) if x.dim() == 3 else torch.addmm(x, B, x, beta=a)
    return (x if wide else x.mT).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised, RMS-matched to AdamW, with decoupled weight decay.

    The orthogonalisation runs in bf16 where matrix products are native in it (GPUs, CPUs with
    AVX512-BF16 or AMX), as nanochat and modded-nanogpt run it: the iteration is approximate
    anyway (~1% apart from float32), and it is ~3x faster there, which matters on a CPU where it
    costs about a third of a small model's step. Elsewhere bf16 is emulated, and float32 is used."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, weight_decay: float = 0.0,
                 dtype: torch.dtype | None = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        if dtype is None:
            on_gpu = any(p.is_cuda for g in self.param_groups for p in g["params"])
            dtype = torch.bfloat16 if on_gpu or native_bf16() else torch.float32
        self.dtype = dtype  # of the orthogonalisation

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
            # matrices of one shape are orthogonalised as one stack: a few batched products instead
            # of ~15 small ones per matrix (a model's blocks repeat the same few shapes)
            by_shape: dict[torch.Size, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                looked_ahead = []
                for p in params:
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                    buf.lerp_(p.grad, 1 - beta)
                    looked_ahead.append(p.grad.lerp(buf, beta))  # Nesterov: the gradient looked ahead
                updates = orthogonalize(torch.stack(looked_ahead), self.dtype)
                for p, update in zip(params, updates):
                    p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-lr * UPDATE_RMS * max(shape) ** 0.5)


class MuonAdamW:
    """Muon on `matrices`, fused AdamW on `others`: one optimizer to the training loop (its
    param_groups are both parts' groups, so the loop's schedule sets every learning rate)."""

    def __init__(self, matrices: list, others: list[dict], *, lr: float, weight_decay: float, betas, eps: float):
        self.muon = Muon(matrices, lr=lr, weight_decay=weight_decay)
        self.adamw = torch.optim.AdamW(others, lr=lr, betas=betas, eps=eps, fused=True)

    @property
    def param_groups(self) -> list[dict]:
        # looked up each time: load_state_dict replaces the parts' group dicts
        return self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
