"""flashtune.data.packing: rows hold whole examples, documents are labelled, order is seeded and resumable."""

import numpy as np
import pytest

from flashtune import data, models  # flashtune first: the CPU BLAS before mlx
from flashtune.data import packing
from flashtune.errors import SequenceTooLongError


@pytest.fixture(scope="module")
def shipped():
    tokenizer = models.gguf.tokenizer_from_gguf(models.gguf.embedded_gguf_path())
    return data.load_dataset(None, tokenizer, mask_prompt=True, max_seq_length=128).train


def test_rows_hold_every_example_once_and_fit():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=300).tolist()
    rows = packing.pack_rows(lengths, 128)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    # Best fit decreasing stays within 11/9 of the optimum (+1 row); the optimum needs at least this many:
    assert len(rows) <= 11 / 9 * np.ceil(sum(lengths) / 128) + 1
    assert rows == packing.pack_rows(lengths, 128)  # deterministic


def test_best_fit_puts_an_example_in_the_fullest_row_it_fits():
    assert packing.pack_rows([6, 5, 4, 3, 1], 10) == [[0, 2], [1, 3, 4]]


def test_packed_rows_keep_each_example_as_its_padded_batch_has_it(shipped):
    examples = shipped.examples[:5]
    batch = packing.make_packed_batch([examples[:3], examples[3:], []], 200, pad_id=7)
    padded = data.make_batch(examples, pad_id=7)
    inputs, targets, mask, segments = (np.array(a) for a in batch.arrays)
    p_inputs, p_targets, p_mask = (np.array(a) for a in padded.arrays)
    assert batch.documents == 5 and batch.input_tokens == sum(len(e.tokens) - 1 for e in examples)
    row, start = 0, 0
    for i, e in enumerate(examples):
        if i == 3:
            row, start = 1, 0
        n = len(e.tokens) - 1
        cut = slice(start, start + n)
        np.testing.assert_array_equal(inputs[row, cut], p_inputs[i, :n])
        np.testing.assert_array_equal(targets[row, cut], p_targets[i, :n])  # never the next document's token
        np.testing.assert_array_equal(mask[row, cut], p_mask[i, :n])
        assert (segments[row, cut] == (i if i < 3 else i - 3)).all()
        start += n
    assert (segments[2] == -1).all() and (mask[2] == 0).all() and (inputs[2] == 7).all()
    assert (segments[0, start:] == -1).all() or row != 0


def test_an_epoch_visits_every_example_once_in_seeded_resumable_order(shipped):
    plan = packing.packed_batches(shipped, 4, 128)
    n = len(plan)
    batches = list(packing.iterate_packed_batches(shipped, 4, 128, seed=3, num_steps=n))
    assert sum(b.documents for b in batches) == len(shipped)
    assert {b.inputs.shape for b in batches} == {(4, 128)}  # one compiled shape
    resumed = list(packing.iterate_packed_batches(shipped, 4, 128, seed=3, start_step=5, num_steps=n - 5))
    for a, b in zip(batches[5:], resumed):
        np.testing.assert_array_equal(np.array(a.segments), np.array(b.segments))
        np.testing.assert_array_equal(np.array(a.inputs), np.array(b.inputs))
    other = list(packing.iterate_packed_batches(shipped, 4, 128, seed=4, num_steps=n))
    assert any(not np.array_equal(np.array(a.inputs), np.array(b.inputs)) for a, b in zip(batches, other))


def test_efficiency_counts_example_tokens_over_slots(shipped):
    plan = packing.packed_batches(shipped, 4, 128)
    used = sum(len(e.tokens) - 1 for e in shipped.examples)
    assert packing.efficiency(shipped, 4, 128) == pytest.approx(used / (len(plan) * 4 * 128))
    # The shipped examples are 47-64 tokens: two fit a row of 128, so an epoch takes half the steps.
    assert len(plan) <= data.num_batches(shipped, 4) / 2 + 1


def test_an_example_longer_than_a_row_is_named(shipped):
    with pytest.raises(
        SequenceTooLongError, match=r"do not fit a packed row of 16 tokens; the longest, .*train.jsonl:\d+"
    ):
        packing.packed_batches(shipped, 4, 16)
