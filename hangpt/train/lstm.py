"""Train the LSTM baseline on a token stream by next-token prediction, the same objective as GPT's
pretraining, so the two can be compared on the same corpus and question."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.lstm import LSTMLanguageModel
from .loop import device, seed_everything


def train_lstm(tokens: list[int], vocab_size: int, *, steps: int = 150, seq_len: int = 16, batch_size: int = 8,
               lr: float = 3e-3, seed: int = 1234, **shape) -> tuple[LSTMLanguageModel, list[float]]:
    """Adam on random windows of `tokens`; returns the model and the loss of every step."""
    if len(tokens) < seq_len + 1:
        raise InputError(f"too little text: {len(tokens)} tokens for windows of {seq_len + 1}")
    seed_everything(seed)
    model = LSTMLanguageModel(vocab_size, **shape).to(device())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.tensor(tokens, dtype=torch.long)
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len, (batch_size,))
        batch = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()]).to(device())
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses
