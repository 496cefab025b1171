"""Muon: the orthogonalisation, one step by hand, which weights it takes, and an exact resume."""

from __future__ import annotations

import io

import torch

from hangpt.models import build_model, preset_config
from hangpt.train.loop import TrainConfig, make_optimizer
from hangpt.train.muon import UPDATE_RMS, Muon, MuonAdamW, orthogonalize


def test_orthogonalize_is_close_to_u_vt():
    torch.manual_seed(0)
    for shape in [(64, 128), (128, 64), (96, 96)]:
        # singular values over two decades (a gradient's spread; the iteration's working range)
        q1, _ = torch.linalg.qr(torch.randn(shape[0], min(shape)))
        q2, _ = torch.linalg.qr(torch.randn(shape[1], min(shape)))
        g = q1 @ torch.diag(torch.logspace(-2, 0, min(shape)) * 5) @ q2.T
        u, s, vh = torch.linalg.svd(g, full_matrices=False)
        x = orthogonalize(g)
        assert x.shape == g.shape
        assert ((x - u @ vh).norm() / (u @ vh).norm()).item() < 0.15
        sv = torch.linalg.svdvals(x)
        assert 0.8 < sv.min().item() and sv.max().item() < 1.2
        # the singular vectors are g's: U^T X V is diagonal up to the iteration's error
        d = u.T @ x @ vh.T
        assert (d - torch.diag(torch.diagonal(d))).abs().max().item() < 1e-3


def test_two_steps_by_hand():
    torch.manual_seed(1)
    p0 = torch.randn(32, 48)
    g1, g2 = torch.randn(32, 48), torch.randn(32, 48)
    lr, beta, wd = 0.01, 0.9, 0.1
    p = torch.nn.Parameter(p0.clone())
    opt = Muon([p], lr=lr, momentum=beta, weight_decay=wd)
    scale = lr * UPDATE_RMS * 48 ** 0.5  # RMS of an orthogonal 32x48 matrix: 1/sqrt(48)
    expected = p0.clone()
    buf = torch.zeros_like(p0)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        buf = beta * buf + (1 - beta) * g
        nesterov = (1 - beta) * g + beta * buf
        u, _, vh = torch.linalg.svd(nesterov, full_matrices=False)
        exact = expected * (1 - lr * wd) - scale * (u @ vh)
        expected = expected * (1 - lr * wd) - scale * orthogonalize(nesterov, opt.dtype)
        torch.testing.assert_close(p.data, expected, rtol=1e-5, atol=1e-6)
        # and within the iteration's tolerance of the SVD's U V^T
        assert ((p.data - exact).norm() / (scale * u @ vh).norm()).item() < 0.15
        # in bf16 (where native) within a few percent of float32's iteration
        assert ((orthogonalize(nesterov, torch.bfloat16) - orthogonalize(nesterov)).norm()
                / orthogonalize(nesterov).norm()).item() < 0.03
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    for arch in ("gpt2", "llama"):
        model = build_model(preset_config("tiny", arch, vocab_size=512, n_layer=2) if arch == "gpt2"
                            else preset_config("tiny", arch, vocab_size=512, num_hidden_layers=2))
        opt = make_optimizer(model, TrainConfig(out=None, optimizer="muon", lr=1e-3))
        assert isinstance(opt, MuonAdamW)
        muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
        adamw = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
        names = {id(p): n for n, p in model.named_parameters()}
        assert not muon & adamw and muon | adamw == set(names)
        assert all(names[i].startswith(("transformer.h.", "model.layers.")) for i in muon)
        assert {p.dim() for n, p in model.named_parameters() if id(p) in muon} == {2}
        embedding = model.embedding().weight
        assert id(embedding) in adamw and id(model.lm_head.weight) in adamw  # (tied: the same tensor)
        assert any(id(p) in adamw and p.dim() == 1 for p in model.parameters())  # norms, biases


def _step(model, opt, batch, lr):
    for group in opt.param_groups:  # as the training loop's schedule does
        group["lr"] = lr
    logits = model(batch[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_resume_from_saved_state_is_exact():
    torch.manual_seed(2)
    cfg = TrainConfig(out=None, optimizer="muon", lr=3e-3)
    config = preset_config("tiny", "llama", vocab_size=256, num_hidden_layers=2, hidden_size=64,
                           intermediate_size=128, num_attention_heads=2, num_key_value_heads=2)
    batches = [torch.randint(0, 256, (2, 17)) for _ in range(6)]
    straight = build_model(config)
    resumed = build_model(config)
    resumed.load_state_dict(straight.state_dict())
    opt = make_optimizer(straight, cfg)
    for i, b in enumerate(batches[:3]):
        _step(straight, opt, b, lr=1e-3 * (i + 1))
    buffer = io.BytesIO()  # as train_state.pt: weights_only
    torch.save({"model": straight.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(state["model"])
    opt2 = make_optimizer(resumed, cfg)
    opt2.load_state_dict(state["optimizer"])
    for i, b in enumerate(batches[3:]):
        _step(straight, opt, b, lr=1e-3 / (i + 1))
        _step(resumed, opt2, b, lr=1e-3 / (i + 1))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_pretrain_defaults_to_the_new_recipe_and_keeps_the_old_as_flags(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from conftest import make_corpus
    from hangpt.cli import cli
    from hangpt.models import gpt2, llama

    monkeypatch.setitem(llama.PRESETS, "test", dict(vocab_size=300, max_position_embeddings=32, hidden_size=32,
                                                    intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                    num_key_value_heads=2, tie_word_embeddings=True))
    monkeypatch.setitem(gpt2.PRESETS, "test", dict(vocab_size=300, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(100)) + "\n", encoding="utf-8")

    def settings(out, *flags):
        args = ["pretrain", "--data", str(corpus), "--out", str(tmp_path / out), "--preset", "test", "--max-steps", "2",
                "--batch-size", "2", "--val-fraction", "0.1", "--no-progress", *flags]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / out / "hangpt.json").read_text())["training"]["settings"]

    new = settings("new")
    assert (new["arch"], new["optimizer"], new["lr_schedule"], new["lr"]) == ("llama", "muon", "linear", 3e-3)
    old = settings("old", "--arch", "gpt2", "--optimizer", "adamw", "--lr-schedule", "cosine")
    assert (old["arch"], old["optimizer"], old["lr_schedule"], old["lr"]) == ("gpt2", "adamw", "cosine", 1e-3)
