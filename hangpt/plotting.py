"""Every picture hangpt draws goes through here: matplotlib without a display, with Hangul drawn
when a Korean font is installed, and the training curves each stage saves beside its checkpoint.

Shared by the training stages (loss and reward curves), the attention heatmaps (inspect) and the
NLP pictures (frequencies, word clouds, word2vec projections). Without a Korean font Hangul would come out as empty boxes, so labels are shown as
escapes instead, and the caller can tell the user how to get one (FONT_HINT).
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from functools import cache
from pathlib import Path

# Families that draw Hangul; the first one installed is used.
HANGUL_FONTS = ("NanumGothic", "Noto Sans CJK KR", "Noto Sans KR", "Noto Sans CJK JP", "Malgun Gothic",
                "AppleGothic", "Apple SD Gothic Neo", "UnDotum", "Baekmuk Gulim", "WenQuanYi Zen Hei")
FONT_HINT = ("no Korean font found, so Hangul is shown escaped; install one (e.g. `sudo apt install fonts-nanum`, "
             "then `rm -rf ~/.cache/matplotlib`)")


@cache
def hangul_font() -> str | None:
    """The name of the first installed font family that has Hangul, or None. NanumGothic comes with
    the koreanize-matplotlib package (a dependency, OFL font), so Hangul draws without a system font."""
    from matplotlib import font_manager

    spec = importlib.util.find_spec("koreanize_matplotlib")  # found, not imported: it would restyle pyplot
    bundled = Path(next(iter(spec.submodule_search_locations))) / "fonts" / "NanumGothic.ttf" if spec else None
    if bundled is not None and bundled.exists():
        font_manager.fontManager.addfont(str(bundled))
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((f for f in HANGUL_FONTS if f in installed), None)


def hangul_font_path() -> str | None:
    """The file of that font (word clouds take a path, not a family name)."""
    from matplotlib import font_manager

    name = hangul_font()
    return font_manager.findfont(font_manager.FontProperties(family=name)) if name else None


def plot_labels(texts: list[str]) -> list[str]:
    """Labels as drawn: as they are with a Korean font, escaped (`\\uc601`) without one."""
    if hangul_font():
        return [t.replace("\n", "\\n") for t in texts]
    return [t.encode("ascii", "backslashreplace").decode().replace("\n", "\\n") for t in texts]


def warn_without_font() -> None:
    """Say once per run how to get Hangul drawn, when it is being escaped."""
    if hangul_font() is None:
        warnings.warn(FONT_HINT)


def pyplot():
    """matplotlib.pyplot on the Agg backend, using the Hangul font when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if hangul_font():
        plt.rcParams["font.family"] = [hangul_font(), "DejaVu Sans"]
    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure (creating its folder) and free it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def loss_curve_png(history: list[dict], title: str, ylabel: str = "loss (nats/token)") -> bytes:
    """A PNG of training (and validation) loss against step."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", linewidth=1.5, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or val:  # nothing logged yet when a run stops in its first steps
        ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def reward_curve_png(history: list[dict], title: str) -> bytes:
    """Mean reward and KL to the reference against step, one panel each."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), dpi=100, sharex=True)
    steps = [h["step"] for h in history]
    top.plot(steps, [h["reward"] for h in history], linewidth=1)
    top.set_ylabel("mean reward")
    bottom.plot(steps, [h["kl"] for h in history], color="tab:red", linewidth=1)
    bottom.set_ylabel("KL to reference")
    bottom.set_xlabel("step")
    top.set_title(title)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
