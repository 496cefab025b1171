"""matplotlib without a display, with Hangul drawn when a Korean font is installed.

Shared by the attention heatmaps (inspect) and the NLP pictures (frequencies, word clouds, word2vec
projections). Without a Korean font Hangul would come out as empty boxes, so labels are shown as
escapes instead, and the caller can tell the user how to get one (FONT_HINT).
"""

from __future__ import annotations

import importlib.util
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
