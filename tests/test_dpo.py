"""DPO on a tiny model: the chosen-over-rejected log-prob margin rises on held-out pairs."""

import json

import torch

from hangpt.train.loop import TrainConfig
from test_reward import synthetic_pairs


def _logp_margin(model_dir, pairs):
    from hangpt.checkpoint import load_checkpoint
    from hangpt.data.preferences import chat_template
    from hangpt.train.dpo import answer_logprobs
    from hangpt.train.reward import collate_pairs, encode_pairs

    ckpt = load_checkpoint(model_dir)
    template = chat_template(ckpt)
    examples = encode_pairs(pairs, template, ckpt.tokenizer, 64)
    ids, mask, _, _ = collate_pairs(examples, ckpt.tokenizer.pad_id)
    with torch.no_grad():
        lp = answer_logprobs(ckpt.model, ids, mask)
    return (lp[: len(pairs)] - lp[len(pairs) :]).mean().item()


def test_answer_logprobs_sum_only_answer_tokens(tiny_checkpoint):
    from hangpt.checkpoint import load_checkpoint
    from hangpt.train.dpo import answer_logprobs

    model = load_checkpoint(tiny_checkpoint).model
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits, -1)
        expected = [logp[0, 1, 7] + logp[0, 2, 8] + logp[0, 3, 9], logp[1, 0, 11] + logp[1, 1, 12]]
        assert torch.allclose(answer_logprobs(model, ids, mask), torch.stack(expected), atol=1e-5)


def test_dpo_raises_held_out_margin(tmp_path, tiny_checkpoint):
    from hangpt.train.dpo import train_dpo

    held_out = synthetic_pairs(24, seed=99)
    before = _logp_margin(tiny_checkpoint, held_out)
    out = tmp_path / "dpo"
    cfg = TrainConfig(out=out, batch_size=8, lr=2e-3, max_steps=12, eval_every=6, save_every=6, log_every=3,
                      progress=False, seed=0)
    train_dpo(tiny_checkpoint, synthetic_pairs(96, 0), cfg, beta=0.1, max_length=64, val_fraction=0.1,
              log=lambda *a: None)
    after = _logp_margin(out, held_out)
    assert after > before + 2.0, (before, after)
    meta = json.loads((out / "hangpt.json").read_text())
    assert meta["stage"] == "dpo" and meta["training"]["settings"]["beta"] == 0.1
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    logged = {k for h in history for k in h}
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "val_logp_margin"} <= logged
    assert history[-1]["val_rewards/accuracies"] >= 0.9



def test_rpo_alpha_adds_the_chosen_answers_cross_entropy(tiny_checkpoint):
    """TRL's RPO loss: sigmoid DPO + rpo_alpha x the mean cross-entropy of the chosen answers' tokens."""
    import torch.nn.functional as F

    from hangpt.checkpoint import load_checkpoint
    from hangpt.train.dpo import dpo_metrics

    model = load_checkpoint(tiny_checkpoint).model
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0], [5, 6, 20, 21, 0], [10, 30, 31, 32, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 1, 1, 1, 0]])
    ref = torch.tensor([[-9.0, -8.0], [-7.0, -9.5]])
    batch = (ids, mask, mask.sum(1), ref)
    with torch.no_grad():
        dpo, _ = dpo_metrics(model, batch, 0.1, "cpu")
        rpo, logged = dpo_metrics(model, batch, 0.1, "cpu", rpo_alpha=0.7)
        logits = model(ids[:2]).logits[:, :-1]
        keep = mask[:2, 1:].bool()
        nll = F.cross_entropy(logits[keep], ids[:2, 1:][keep])
    torch.testing.assert_close(rpo, dpo + 0.7 * nll)
    assert abs(logged["nll_loss"] - nll.item()) < 1e-5
