"""The language model before the transformer: an LSTM reads the tokens one by one and carries
everything it knows about the past in a fixed-size state (GPT instead looks back at every token
with attention). Kept small, to compare with GPT on the same next-word question."""

from __future__ import annotations

import torch
from torch import nn


class LSTMLanguageModel(nn.Module):
    """Embedding -> nn.LSTM -> linear layer to next-token logits."""

    def __init__(self, vocab_size: int, n_embd: int = 128, hidden_size: int = 256, num_layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, n_embd)
        self.lstm = nn.LSTM(n_embd, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids: torch.Tensor, state=None) -> tuple[torch.Tensor, tuple]:
        """(B, T) ids -> ((B, T, vocab) logits, (h, c) state to continue from)."""
        out, state = self.lstm(self.embed(ids), state)
        return self.head(out), state

    @torch.no_grad()
    def generate(self, ids: list[int], max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
        """Greedy continuation of `ids`: the prompt is read once, then each new token updates the state."""
        device = self.head.weight.device
        logits, state = self(torch.tensor([ids], device=device))
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            if token == eos_token_id:
                break
            new.append(token)
            logits, state = self(torch.tensor([[token]], device=device), state)
        return new

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
