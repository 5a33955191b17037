"""The packed-attention benchmark's documents, ids and batches, and one small run on the CPU."""

import json

import numpy as np

from flashtune.bench import packed_attention as bench
from flashtune.data.packing import pack_rows


def test_documents_fill_the_rows_and_ids_mark_them():
    lengths = bench.document_lengths(rows=3, length=512, median=60, sigma=1.0, lo=8, seed=1)
    assert all(8 <= n <= 512 for n in lengths)
    assert len(pack_rows(lengths, 512)) == 3  # one more document would need a fourth row
    ids = np.array(bench.packed_ids(lengths, 3, 512))
    assert (ids >= 0).sum() == sum(lengths)
    for row in ids:  # documents are contiguous runs numbered 0, 1, ... then padding
        docs = row[row >= 0]
        assert (np.diff(docs) >= 0).all() and (row[len(docs) :] == -1).all()
        assert sorted(set(docs)) == list(range(len(set(docs))))


def test_unpacked_batches_pad_sorted_documents_to_the_granularity():
    assert bench.unpacked_batches([300, 5, 129, 64, 1000], rows=2, granularity=128) == [(2, 128), (2, 384), (1, 1024)]


def test_run_writes_a_header_and_one_record_per_implementation(tmp_path):
    out = tmp_path / "packed.jsonl"
    records = bench.run(
        ["practical", "baseline"], out=out, warmup=0, repeat=1, rows=1, length=256, median=40, n_heads=2, n_kv_heads=1
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["kind"] == "packed-attention-bench" and [r["impl"] for r in lines[1:]] == ["practical", "baseline"]
    for record in records:
        assert record["packed_ms"] > 0 and record["unpacked_ms"] > 0 and record["documents"] >= 2
    assert "| practical |" in bench.table(records)
