"""ShuffledBatches: every example once per epoch, reproducible, resumable, and length-bucketed."""

import random

from hangpt.data.batches import ShuffledBatches


def lengths_of(n, seed=0):
    rng = random.Random(seed)
    return [rng.randint(1, 200) for _ in range(n)]


def epoch_batches(source):
    return [source.next_batch() for _ in range(source.steps_per_epoch)]


def test_bucketed_epoch_covers_every_example_once_with_little_padding():
    lengths = lengths_of(5000)
    examples = list(range(len(lengths)))
    plain = ShuffledBatches(examples, 32, list, seed=3, drop_last=False)
    bucketed = ShuffledBatches(examples, 32, list, seed=3, drop_last=False, length=lengths.__getitem__)
    for source in (plain, bucketed):
        seen = [i for b in epoch_batches(source) for i in b]
        assert sorted(seen) == examples

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    plain_pad = padding(epoch_batches(plain))
    bucketed_pad = padding(epoch_batches(bucketed))
    assert bucketed_pad < plain_pad / 10, (bucketed_pad, plain_pad)


def test_bucketed_order_changes_per_epoch_and_resumes_exactly():
    lengths = lengths_of(1000, seed=1)
    make = lambda: ShuffledBatches(list(range(1000)), 6, list, seed=7, length=lengths.__getitem__)  # noqa: E731
    a = make()
    first, second = epoch_batches(a), epoch_batches(a)
    assert first != second  # a fresh order every epoch
    assert sorted(map(len, first)) == [6] * 166  # drop_last: the partial batch is left out
    b = make()
    for _ in range(30):
        b.next_batch()
    state = b.state_dict()
    c = make()
    c.load_state_dict(state)
    assert [c.next_batch() for _ in range(50)] == (first + second)[30:80]


def test_data_within_one_window_is_only_shuffled():
    lengths = lengths_of(100)
    plain = ShuffledBatches(list(range(100)), 4, list, seed=2)
    small = ShuffledBatches(list(range(100)), 4, list, seed=2, length=lengths.__getitem__)
    assert epoch_batches(plain) == epoch_batches(small)


def test_ddp_ranks_take_disjoint_slices_of_the_single_process_batch():
    lengths = lengths_of(1000, seed=4)
    make = lambda bs, rank, world: ShuffledBatches(list(range(1000)), bs, list, seed=5,  # noqa: E731
                                                   rank=rank, world_size=world, length=lengths.__getitem__)
    single, ranks = make(6, 0, 1), [make(3, r, 2) for r in range(2)]
    assert all(r.steps_per_epoch == single.steps_per_epoch == 166 for r in ranks)
    for _ in range(2 * single.steps_per_epoch):  # two epochs
        whole, (a, b) = single.next_batch(), [r.next_batch() for r in ranks]
        assert len(a) == len(b) == 3 and not set(a) & set(b)
        assert a + b == whole
    resumed = make(3, 1, 2)
    resumed.load_state_dict(ranks[1].state_dict())
    assert [resumed.next_batch() for _ in range(5)] == [ranks[1].next_batch() for _ in range(5)]


def test_a_partial_batch_is_split_evenly_between_ranks():
    ranks = [ShuffledBatches(list(range(5)), 4, list, seed=1, rank=r, world_size=2) for r in range(2)]
    a, b = (r.next_batch() for r in ranks)
    assert len(a) == 2 and len(b) == 3 and sorted(a + b) == list(range(5))
