"""Validation loss over the valid split, with the training step's loss and padding."""

import mlx.core as mx

from flashtune import data
from flashtune.config import TrainConfig
from flashtune.train.chunked_loss import chunk_tokens_for
from flashtune.train.step import loss_sum


def evaluate(model, dataset: data.Dataset, config: TrainConfig, pad_to: int) -> float:
    """Mean token loss over the first ``config.val_batches`` batches (-1: all) of ``dataset``."""
    total, count = mx.array(0.0), mx.array(0.0)
    chunk_tokens = chunk_tokens_for(model, config.chunked_loss, config.loss_chunk_tokens)
    n = data.num_batches(dataset, config.batch_size)
    n = n if config.val_batches < 0 else min(n, config.val_batches)
    for batch in data.iterate_batches(
        dataset, config.batch_size, seed=config.seed, num_steps=n, loop=False, pad_to_multiple=pad_to
    ):
        s, c = loss_sum(model, *batch.arrays, chunk_tokens=chunk_tokens)
        total, count = total + s, count + c
        mx.eval(total, count)
    return (total / count).item()
