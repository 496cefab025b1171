"""Look inside a model: tokens, hidden-state shapes, parameters per module, next-token
probabilities and attention maps (as numbers for the playground, as PNG heatmaps for files).

Everything comes from one forward pass with `output_hidden_states` and `output_attentions`, so the
CLI (`hangpt inspect`) and the playground's attention page show the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError
from .models import CausalLM
from .plotting import plot_labels as _labels, pyplot as _pyplot, save_figure as _save


@dataclass
class Inspection:
    ids: list[int]
    pieces: list[str]
    hidden_shapes: list[tuple[int, ...]]  # embeddings, then each block's output (last has ln_f)
    attentions: list[torch.Tensor]  # per layer: (n_head, T, T), rows = query, columns = key
    top_next: list[dict]  # [{"id", "token", "prob"}], most likely first

    def to_dict(self) -> dict:
        return {
            "tokens": [{"id": i, "piece": p} for i, p in zip(self.ids, self.pieces)],
            "hidden_states": [{"name": n, "shape": list(s)} for n, s in zip(hidden_names(len(self.hidden_shapes)),
                                                                            self.hidden_shapes)],
            "top_next": self.top_next,
        }


def hidden_names(n: int) -> list[str]:
    """Names of the hidden states a forward pass returns: embeddings, then one per block."""
    return ["embeddings"] + [f"block {i}" + (" (+ ln_f)" if i == n - 2 else "") for i in range(n - 1)]


@torch.no_grad()
def inspect_text(model: CausalLM, tokenizer, text: str, top_k: int = 10) -> Inspection:
    """One forward pass over `text` (truncated to the model's context, keeping the end)."""
    ids = tokenizer.encode(text)
    if not ids:
        raise InputError("--text: the text is empty (no tokens to inspect)")
    ids = ids[-model.config.context_length:]
    out = model(torch.tensor([ids], device=_device(model)), output_hidden_states=True, output_attentions=True)
    probs = out.logits[0, -1].float().softmax(-1)
    p, idx = probs.topk(min(top_k, probs.numel()))
    top = [{"id": int(i), "token": tokenizer.decode([int(i)]), "prob": round(float(q), 6)} for q, i in zip(p, idx)]
    return Inspection(
        ids=ids,
        pieces=tokenizer.pieces(ids),
        hidden_shapes=[tuple(h.shape) for h in out.hidden_states],
        attentions=[a[0].float().cpu() for a in out.attentions],
        top_next=top,
    )


def plot_graph(model: CausalLM, tokenizer, text: str, path: str | Path) -> Path:
    """The computation graph of one forward pass over `text`: every operation autograd records for
    the backward pass (blue boxes: the weights, named as in the checkpoint), drawn by torchviz with
    Graphviz's `dot` program. The format follows the file name: .png, .svg or .pdf."""
    import shutil
    import warnings

    from torchviz import make_dot

    from .errors import HangptError

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"--graph {path}: name a .png, .svg or .pdf file")
    if shutil.which("dot") is None:
        raise HangptError("--graph needs Graphviz's `dot` program: install Graphviz "
                          "(apt-get install graphviz, brew install graphviz, or graphviz.org)")
    ids = tokenizer.encode(text)[-model.config.context_length:]
    if not ids:
        raise InputError("--text: the text is empty (no tokens to inspect)")
    with torch.enable_grad():
        logits = model(torch.tensor([ids], device=_device(model))).logits
    with warnings.catch_warnings():  # torchviz still compares versions with distutils
        warnings.simplefilter("ignore", DeprecationWarning)
        graph = make_dot(logits, params=dict(model.named_parameters()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph.pipe(format=path.suffix[1:].lower()))
    return path


def _device(model) -> torch.device:
    return next(model.parameters()).device


def parameter_summary(model: CausalLM) -> list[dict]:
    """Parameters per module under the checkpoint's names: embeddings, each block's parts (norms,
    attention, MLP), the final norm and the LM head (0 when tied to the embeddings).

    Shared tensors are counted once, at their first owner, so the total equals
    `model.num_parameters()`; the last row is the total.
    """
    names = {id(m): name for name, m in model.named_modules()}
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    parts = [child for block in model.blocks for child in block.children()]
    modules = [*embeddings, *parts, model.final_norm, model.lm_head]
    seen: dict[int, str] = {}
    rows = []
    for module in modules:
        name = names[id(module)]
        own = [p for p in module.parameters() if id(p) not in seen]
        shared = [seen[id(p)] for p in module.parameters() if id(p) in seen]
        seen.update((id(p), name) for p in own)
        row = {"module": name, "parameters": sum(p.numel() for p in own)}
        if shared:
            row["note"] = f"tied to {shared[0]}"
        rows.append(row)
    rows.append({"module": "total", "parameters": sum(r["parameters"] for r in rows)})
    return rows


def attention_json(inspection: Inspection) -> dict:
    """Tokens and every layer/head's attention weights, rounded, for the playground's canvas."""
    return {
        "tokens": inspection.pieces,
        "ids": inspection.ids,
        "n_layer": len(inspection.attentions),
        "n_head": inspection.attentions[0].shape[0],
        "attentions": [[[[round(float(x), 4) for x in row] for row in head] for head in layer.tolist()]
                       for layer in inspection.attentions],
    }


# -- plots ----------------------------------------------------------------------------------------


def plot_attention(inspection: Inspection, layer: int, head: int, path: str | Path) -> Path:
    """One head's heatmap (query rows, key columns) as a PNG."""
    plt = _pyplot()
    weights = _head(inspection, layer, head)
    n = len(inspection.pieces)
    size = min(2 + 0.35 * n, 20)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    _draw(ax, weights, _labels(inspection.pieces), f"layer {layer} head {head}", ticks=True)
    fig.colorbar(ax.images[0], ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def plot_attention_grid(inspection: Inspection, layer: int, path: str | Path) -> Path:
    """All heads of one layer side by side (a grid), tick labels only when they stay readable."""
    plt = _pyplot()
    _head(inspection, layer, 0)  # validates the layer
    n_head = inspection.attentions[layer].shape[0]
    cols = min(4, n_head)
    rows = (n_head + cols - 1) // cols
    n = len(inspection.pieces)
    cell = min(max(2.5, 0.25 * n), 8)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * cell), squeeze=False)
    labels = _labels(inspection.pieces)
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h < n_head:
            _draw(ax, _head(inspection, layer, h), labels, f"head {h}", ticks=n <= 24)
        else:
            ax.axis("off")
    fig.suptitle(f"layer {layer}: attention of every head")
    return _save(fig, path)


def _head(inspection: Inspection, layer: int, head: int) -> torch.Tensor:
    n_layer = len(inspection.attentions)
    if not 0 <= layer < n_layer:
        raise InputError(f"--layer {layer}: the model has layers 0..{n_layer - 1}")
    n_head = inspection.attentions[layer].shape[0]
    if not 0 <= head < n_head:
        raise InputError(f"--head {head}: the model has heads 0..{n_head - 1}")
    return inspection.attentions[layer][head]


def _draw(ax, weights: torch.Tensor, labels: list[str], title: str, ticks: bool) -> None:
    ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_title(title)
    if ticks:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
