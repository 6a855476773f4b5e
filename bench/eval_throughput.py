"""Evaluation throughput: xlgm's evaluation against the common way, in one run.

The common way: pad every pair to 128 tokens and feed batches in file order under `torch.no_grad`.
xlgm's way: tokenize once, sort by length, pad each batch to its longest member, `torch.inference_mode`.
Same model (the embedded multilingual-e5-small), same rows (500 XNLI test rows in each of 2 languages),
same batch size. Prints examples/s of both, the ratio, and checks both give the same predictions.

    python bench/eval_throughput.py [--model embedded] [--languages en,ar] [--batch-size 64] [--repeats 1]
                                    [--sweep 16,32,64,128]

--sweep also times xlgm's way at each of those batch sizes, interleaved, and prints each one's throughput as a
ratio to --batch-size's (on 2 CPU cores, 1000 rows: 16 -> 1.08x, 32 -> 1.01x, 128 -> 0.72x of batch 64).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from xlgm.data.batching import tokenize_examples
from xlgm.data.loading import load_examples
from xlgm.data.tasks import XNLI
from xlgm.models.load import load_classifier, load_tokenizer
from xlgm.recipes.evaluate import predict_logits


@torch.no_grad()
def common_way(model, tokenizer, rows, batch_size: int) -> np.ndarray:
    enc = tokenizer(
        [r.text_a for r in rows],
        [r.text_b for r in rows],
        padding="max_length",
        truncation=True,
        max_length=128,
        return_tensors="pt",
    )
    out = []
    for start in range(0, len(rows), batch_size):
        out.append(model(**{k: v[start : start + batch_size] for k, v in enc.items()}).logits.float().numpy())
    return np.concatenate(out)


def xlgm_way(model, tokenizer, rows, batch_size: int) -> np.ndarray:
    return predict_logits(model, tokenizer, tokenize_examples(tokenizer, rows, 128), batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--languages", default="en,ar")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sweep", default="", help="comma-separated batch sizes to time xlgm's way at")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_classifier(args.model, XNLI.num_labels).eval()
    tokenizer = load_tokenizer(args.model)
    rows = [r for lang in args.languages.split(",") for r in load_examples(XNLI, "test", lang)]
    print(
        f"model {args.model}, {len(rows)} XNLI test rows ({args.languages}), batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )

    timings = {"common (pad 128, file order)": [], "xlgm (bucketed, dynamic pad)": []}
    outputs = {}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        for name, fn in zip(timings, (common_way, xlgm_way)):
            start = time.perf_counter()  # tokenization counts: it is part of either way
            outputs[name] = fn(model, tokenizer, rows, args.batch_size)
            timings[name].append(time.perf_counter() - start)
    rates = {name: len(rows) / min(t) for name, t in timings.items()}
    for name, rate in rates.items():
        print(f"{name:<32}{rate:10.1f} examples/s  ({min(timings[name]):.1f} s)")
    common, ours = outputs.values()
    agree = float((common.argmax(-1) == ours.argmax(-1)).mean())
    print(f"max |logit difference| {np.abs(common - ours).max():.2e}; predictions agree on {agree:.1%}")
    ratio = rates["xlgm (bucketed, dynamic pad)"] / rates["common (pad 128, file order)"]
    print(f"ratio xlgm / common: {ratio:.2f}x (goal >= 2x)")
    if args.sweep:
        sweep(model, tokenizer, rows, [int(b) for b in args.sweep.split(",")], args.batch_size, args.repeats)


def sweep(model, tokenizer, rows, sizes: list[int], reference: int, repeats: int) -> None:
    """xlgm's way at each batch size (best of `repeats`, interleaved), as a ratio to the reference size's."""
    sizes = sorted(set(sizes) | {reference})
    best = {b: float("inf") for b in sizes}
    for _ in range(repeats):
        for b in sizes:
            start = time.perf_counter()
            xlgm_way(model, tokenizer, rows, b)
            best[b] = min(best[b], time.perf_counter() - start)
    for b in sizes:
        print(
            f"xlgm, batch {b:<5}{len(rows) / best[b]:10.1f} examples/s  ratio to batch {reference}: "
            f"{best[reference] / best[b]:.2f}x"
        )


if __name__ == "__main__":
    main()
