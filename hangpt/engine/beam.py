"""Beam search with transformers' exact semantics (its vectorised `_beam_search`, v4.50+/5.x).

Per step each prompt keeps the best `2 * num_beams` continuations over all its beams; the best
`num_beams` that did not just end continue, and those that ended (eos, or the length limit) compete
for the finished list with score = sum of logprobs / (generated length incl. eos) ** length_penalty.
early_stopping: True stops a prompt once num_beams sequences are finished; False stops when the
best running beam, at its current length, cannot beat the worst finished one; "never" assumes it
could grow to max length (with length_penalty > 0). Stop strings cut the returned text afterwards.
"""

from __future__ import annotations

import torch

from .batch import evaluating
from .config import Completion, GenerationConfig
from .fast import topk
from .processors import Processor
from .text import truncate_at_stop

BIG = -1.0e9


def beam_search(engine, prompts: list[list[int]], config: GenerationConfig) -> list[list[Completion]]:
    with evaluating(engine.model):
        return _beam_search(engine, prompts, config)


@torch.inference_mode()
def _beam_search(engine, prompts: list[list[int]], config: GenerationConfig) -> list[list[Completion]]:
    nb, V, dev = config.num_beams, engine.vocab_size, engine.device
    B, P = len(prompts), max(len(p) for p in prompts)
    max_new = min(config.max_new_tokens, engine.model.config.context_length - P + 1)
    max_len = P + max_new
    eos = torch.tensor(config.eos_ids(engine.model.config.eos_token_id), dtype=torch.long, device=dev)
    keep = max(2, 1 + len(eos)) * nb
    top_mask = torch.arange(keep, device=dev) < nb
    generator = torch.Generator(device=dev).manual_seed(config.seed) if config.seed is not None else None

    batch, logits = engine.prefill(prompts, max_len)
    expand = torch.arange(B, device=dev).repeat_interleave(nb)  # the beams start as copies of the prompt
    batch.select(expand)
    logits = logits.index_select(0, expand)
    proc = Processor([config] * (B * nb), V, dev)
    offset = torch.arange(B, device=dev).unsqueeze(1) * nb

    running = batch.seqs.view(B, nb, -1).clone()  # (B, nb, max_len), pads hold V
    batch.record = False  # beam search keeps its own sequences in `running`
    running_scores = torch.zeros(B, nb, device=dev)
    running_scores[:, 1:] = BIG  # only the first beam's continuations count at the first step
    finished = running.clone()
    finished_scores = torch.full((B, nb), BIG, device=dev)
    finished_lengths = torch.zeros(B, nb, dtype=torch.long, device=dev)
    is_finished = torch.zeros(B, nb, dtype=torch.bool, device=dev)
    may_improve = torch.ones(B, 1, dtype=torch.bool, device=dev)
    cur = P
    while True:
        log_probs = logits.log_softmax(dim=-1)
        flat = running.view(B * nb, -1)[:, :cur]
        log_probs = proc.penalize(log_probs, flat, P)
        if proc.any_sample:
            log_probs = proc.warp(log_probs)
        log_probs = (log_probs.view(B, nb, V) + running_scores[:, :, None]).view(B, nb * V)

        if proc.any_sample:  # sampled without replacement, then best first, as transformers orders them
            top_idx = torch.multinomial(log_probs.softmax(dim=-1), keep, generator=generator)
            top_lp, order = log_probs.gather(1, top_idx).sort(dim=-1, descending=True)
            top_idx = top_idx.gather(1, order)
        else:
            top_lp, top_idx = topk(log_probs, keep)
        top_beam = top_idx // V
        top_ids = top_idx % V
        last = cur + 1 >= max_len
        hits = None
        if last:
            hits = torch.ones_like(top_ids, dtype=torch.bool)
        elif len(eos):
            hits = torch.isin(top_ids, eos)
            hits = hits if bool(hits.any()) else None

        if hits is None:
            # nothing ended (the usual step): the best num_beams continuations simply run on, and
            # the finished list cannot change (the branch below would only rank -1e9 scores)
            running = torch.take_along_dim(running, top_beam[:, :nb, None], dim=1)
            running[:, :, cur] = top_ids[:, :nb]
            running_scores = top_lp[:, :nb]
            beam_idx = (top_beam[:, :nb] + offset).view(-1)
        else:
            top_seqs = torch.take_along_dim(running, top_beam[..., None], dim=1)
            top_seqs[:, :, cur] = top_ids
            # the best num_beams continuations that did not end keep running
            running_lp = top_lp + hits.to(torch.float32) * BIG
            nxt = torch.topk(running_lp, nb)[1]
            running = torch.take_along_dim(top_seqs, nxt[..., None], dim=1)
            running_scores = torch.take_along_dim(running_lp, nxt, dim=1)
            beam_idx = (torch.take_along_dim(top_beam, nxt, dim=1) + offset).view(-1)

            # those that ended among the top num_beams compete for the finished list
            just_finished = hits & top_mask[None, :]
            fin_lp = top_lp / ((cur + 1 - P) ** config.length_penalty)
            full = torch.all(is_finished, dim=-1, keepdim=True) & (config.early_stopping is True)
            fin_lp += full.to(torch.float32) * BIG
            fin_lp += (~may_improve).to(torch.float32) * BIG
            fin_lp += (~just_finished) * BIG
            merged_scores = torch.cat((finished_scores, fin_lp), dim=1)
            best = torch.topk(merged_scores, nb)[1]
            finished = torch.take_along_dim(torch.cat((finished, top_seqs), dim=1), best[..., None], dim=1)
            finished_scores = torch.take_along_dim(merged_scores, best, dim=1)
            lengths = torch.full_like(top_ids, cur + 1 - P)
            finished_lengths = torch.take_along_dim(torch.cat((finished_lengths, lengths), dim=1), best, dim=1)
            is_finished = torch.take_along_dim(torch.cat((is_finished, just_finished), dim=1), best, dim=1)

        cur += 1
        if last or (hits is not None and bool(hits.all())):
            break
        if bool(is_finished.any()):  # with nothing finished yet, every prompt may still improve
            if config.early_stopping == "never" and config.length_penalty > 0.0:
                best_length = max_len - P
            else:
                best_length = cur - P
            best_running = running_scores[:, :1] / (best_length ** config.length_penalty)
            worst_finished = torch.where(is_finished, torch.min(finished_scores, dim=1, keepdim=True)[0], BIG)
            may_improve = may_improve & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
            all_done = bool(torch.all(is_finished)) and config.early_stopping is True
            if not bool(may_improve.any()) or all_done:
                break

        batch.select(beam_idx)
        batch.length = cur - 1
        logits = engine.step(batch, running.view(B * nb, -1)[:, cur - 1])  # rows share one config: proc stays

    eos_set = set(eos.tolist())
    out = []
    for b in range(B):
        group = []
        for k in range(config.num_return_sequences):
            n = int(finished_lengths[b, k])
            ids = finished[b, k, P : P + n].tolist()
            reason = "length"
            if ids and ids[-1] in eos_set:
                ids, reason = ids[:-1], "stop"
            text, ids, stopped = truncate_at_stop(engine.tokenizer, ids, config.stop)
            group.append(Completion(text, ids, "stop" if stopped else reason))
        out.append(group)
    return out
