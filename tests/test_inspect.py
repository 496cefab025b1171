"""hangpt inspect: tokens, hidden-state shapes, parameter summary, next-token probabilities, heatmaps."""

from __future__ import annotations

import json

import pytest

from hangpt.checkpoint import load_checkpoint
from hangpt.errors import InputError
from hangpt.inspect import (attention_json, inspect_text, parameter_summary, plot_attention,
                            plot_attention_grid)


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def test_forward_pass_facts(ckpt):
    found = inspect_text(ckpt.model, ckpt.tokenizer, "오늘 날씨가 정말 좋네요.", top_k=5)
    n = len(found.ids)
    assert found.ids == ckpt.tokenizer.encode("오늘 날씨가 정말 좋네요.")
    assert found.hidden_shapes == [(1, n, 64)] * 3  # embeddings + 2 blocks
    assert len(found.attentions) == 2 and found.attentions[0].shape == (4, n, n)
    assert found.attentions[0].triu(1).abs().max() == 0  # causal: nothing attends to the future
    probs = [t["prob"] for t in found.top_next]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
    data = attention_json(found)
    assert data["tokens"] == found.pieces and len(data["attentions"][1][3]) == n


def test_parameter_summary_adds_up(ckpt):
    rows = parameter_summary(ckpt.model)
    assert rows[-1] == {"module": "total", "parameters": ckpt.model.num_parameters()}
    by_name = {r["module"]: r for r in rows}
    assert by_name["lm_head"]["parameters"] == 0 and "tied" in by_name["lm_head"]["note"]
    assert by_name["transformer.h.1.attn"]["parameters"] == 64 * 3 * 64 + 3 * 64 + 64 * 64 + 64


def test_heatmaps_are_written(ckpt, tmp_path):
    found = inspect_text(ckpt.model, ckpt.tokenizer, "주말에 영화를 봤어요")
    one = plot_attention(found, 1, 2, tmp_path / "one.png")
    grid = plot_attention_grid(found, 0, tmp_path / "grid.png")
    for path in (one, grid):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="--layer 5"):
        plot_attention(found, 5, 0, tmp_path / "x.png")
    with pytest.raises(InputError, match="--head 9"):
        plot_attention(found, 0, 9, tmp_path / "x.png")


def test_inspect_command(tiny_checkpoint, tmp_path, capsys):
    from hangpt.cli import main

    with pytest.raises(SystemExit) as e:
        main(["inspect", "--model", str(tiny_checkpoint), "--text", "오늘 날씨가", "--out", str(tmp_path / "png"),
              "--layer", "1", "--json"])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert [t["piece"] for t in out["tokens"]]
    assert out["parameters"][-1]["module"] == "total"
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == ["attention_L1_H0.png", "attention_L1_H1.png", "attention_L1_H2.png", "attention_L1_H3.png",
                     "attention_layer1.png"]
    with pytest.raises(SystemExit) as e:
        main(["inspect", "--model", str(tiny_checkpoint), "--text", "", "--json"])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err
