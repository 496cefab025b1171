"""The batcher: queued requests share one decoding batch; a cancelled request leaves it."""

from __future__ import annotations

import asyncio

from hangpt.checkpoint import load_checkpoint
from hangpt.engine import Engine, GenerationConfig
from hangpt.serve.batcher import Batcher, Job


def _engine(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    return Engine(ckpt.model, ckpt.tokenizer), ckpt.tokenizer


def test_queued_requests_are_decoded_in_one_batch(tiny_checkpoint):
    engine, tok = _engine(tiny_checkpoint)

    async def main():
        batcher = Batcher(engine, max_batch_size=8)
        config = GenerationConfig(max_new_tokens=5)
        tickets = [batcher.submit([Job(tok.encode(text), config, [0])]) for text in ("오늘", "주말에 친구와", "봄")]
        batcher.start()  # everything is already queued, so the first batch takes all three
        texts = []
        for ticket in tickets:
            texts.append("".join([ev.text async for _, ev in ticket.events()]))
        batcher.close()
        return batcher, texts

    batcher, texts = asyncio.run(main())
    assert batcher.batches == 1 and batcher.largest_batch == 3
    alone = [engine.generate([tok.encode(t)], GenerationConfig(max_new_tokens=5))[0][0].text
             for t in ("오늘", "주말에 친구와", "봄")]
    assert texts == alone  # batching (left padding) does not change greedy answers


def test_cancelled_request_stops_and_others_finish_static(tiny_checkpoint):
    engine, tok = _engine(tiny_checkpoint)
    config = GenerationConfig(max_new_tokens=60, logit_bias={engine.model.config.eos_token_id: -100.0})
    seen = []

    class CancelAfterFirstEvent:
        """The client of row 1 goes away right after its first event (decided in the worker thread,
        so the test does not depend on timing)."""

        def stream_batch(self, requests, is_cancelled):
            for event in engine.stream_batch(requests, is_cancelled):
                seen.append(event.index)
                if event.index == 1:
                    drop.cancel()
                yield event

    async def main():
        nonlocal drop
        batcher = Batcher(CancelAfterFirstEvent(), max_batch_size=8, batching="static")
        keep = batcher.submit([Job(tok.encode("오늘"), config, [0])])
        drop = batcher.submit([Job(tok.encode("주말에"), config, [0])])
        batcher.start()
        tokens = sum([len(ev.token_ids) async for _, ev in keep.events()])
        batcher.close()
        return tokens

    drop = None
    assert asyncio.run(main()) == 60
    assert seen.count(1) == 1 and seen.count(0) >= 2  # row 1 left the batch; row 0 went on


def test_beam_search_jobs_give_every_sequence(tiny_checkpoint):
    engine, tok = _engine(tiny_checkpoint)

    async def main():
        batcher = Batcher(engine)
        batcher.start()
        ticket = batcher.submit([Job(tok.encode("오늘"), GenerationConfig(max_new_tokens=4, num_beams=3,
                                                                        num_return_sequences=2), [0, 1])])
        got = [(choice, ev.finish_reason) async for choice, ev in ticket.events()]
        batcher.close()
        return got

    got = asyncio.run(main())
    assert sorted(c for c, _ in got) == [0, 1] and all(f for _, f in got)
