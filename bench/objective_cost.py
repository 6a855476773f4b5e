"""Cost of each objective per optimizer step, relative to AdamW, at equal batches.

    python bench/objective_cost.py            # the embedded model if installed, else --tiny
    python bench/objective_cost.py --tiny     # a random BERT and a tokenizer trained here, CPU-friendly

Every objective trains its own copy of the same initial model on the same sequence of batches (built from
synthetic sentence pairs, tokenized once, padded dynamically), through `accelerate` as the loop does:
micro_step per micro-batch, then optimizer.step() and zero_grad(set_to_none=True). Timing is per optimizer
step after a warm-up, in interleaved rounds (so a noisy machine hits every objective alike), reported as
the median; the ratio is to AdamW's median. Fisher runs its penalty every step on the whole batch; MVR
includes re-tokenizing the sampled view. Goals: SAM <= 2.1, ASAM <= 2.2, Fisher <= 2.6, MVR <= 2.2.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from xlgm.data.tasks import Example
from xlgm.objectives import build_objective
from xlgm.objectives.base import StepContext

GOALS = {"adamw": 1.0, "sam": 2.1, "asam": 2.2, "fisher": 2.6, "mvr": 2.2}

WORDS = (
    "the a an of to in and is was for on with as by at from that this it be are were has have had not "
    "but or which one all their there been more when will would who so no out up into than them can only "
    "other new some could time these two may then do first any like now my such make over our even most "
    "man woman child people city country world government company school house water family story night "
    "play run read write speak think believe know understand remember forget open close begin finish "
    "quickly slowly carefully happily suddenly unexpectedly probably certainly perhaps generally "
    "beautiful important different international significant reasonable interesting comfortable "
    "multilingual generalization representation translation transformer subword regularization "
    "sharpness minimization perturbation paraphrase contradiction entailment hypothesis premise "
    "neighbourhood committee festival library inspector seashore mountain village weather guitar"
).split()


def synthetic_rows(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)

    def sentence(lo: int, hi: int) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
        text = " ".join(words)
        return text[0].upper() + text[1:] + rng.choice([".", ".", "?", "!"])

    return [Example(sentence(12, 40), sentence(6, 20), rng.randrange(3)) for _ in range(n)]


def tiny_model_and_tokenizer(rows: list[Example], kind: str, hidden: int, layers: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    corpus = [r.text_a for r in rows] + [r.text_b for r in rows]
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=1000, special_tokens=specials))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        tok.decoder = decoders.WordPiece()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
        )
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        trainer = trainers.UnigramTrainer(vocab_size=1000, special_tokens=specials, unk_token="<unk>")
        tok.train_from_iterator(corpus, trainer)
        bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
        )
        tok.decoder = decoders.Metaspace()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", cls_token="<s>", sep_token="</s>"
        )
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
        num_labels=3,
    )
    torch.manual_seed(0)
    description = f"tiny random BERT (hidden {hidden}, {layers} layers, {kind})"
    return BertForSequenceClassification(config), tokenizer, description


def embedded_model_and_tokenizer():
    """The embedded default model, if `xlgm.models.embedded` provides it; else None."""
    try:
        from xlgm.models.embedded import embedded_model_dir  # type: ignore
    except ImportError:
        return None
    try:
        path = embedded_model_dir()
    except Exception:  # noqa: BLE001 - the embedded model cannot be fetched here: no number for it
        return None
    if path is None or not Path(path).exists():
        return None
    from xlgm.models.load import load_classifier, load_tokenizer

    model = load_classifier(str(path), 3)
    tokenizer = load_tokenizer(str(path))
    return model, tokenizer, f"embedded multilingual-e5-small ({path})"


def make_batches(tokenizer, rows, batch_size, num_batches, max_length, seed=0):
    rng = random.Random(seed)
    batches = []
    for _ in range(num_batches):
        idx = rng.sample(range(len(rows)), batch_size)
        chosen = [rows[i] for i in idx]
        enc = tokenizer(
            [r.text_a for r in chosen],
            [r.text_b for r in chosen],
            truncation=True,
            max_length=max_length,
            padding="longest",
            return_tensors="pt",
        )
        batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        batch["labels"] = torch.tensor([r.label for r in chosen])
        batch["idx"] = torch.tensor(idx)
        batches.append(batch)
    return batches


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT and a tokenizer trained here")
    parser.add_argument("--tiny-tokenizer", choices=["wordpiece", "unigram"], default="unigram")
    parser.add_argument("--tiny-hidden", type=int, default=128)
    parser.add_argument("--tiny-layers", type=int, default=4)
    parser.add_argument("--objectives", default="adamw,sam,asam,fisher,mvr")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="'NAME key=value ...'",
        help="an extra variant to time, e.g. --also 'fisher sub_batch=16' --also 'fisher every=10'",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per objective")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per objective per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default on CPU: 1, for stable ratios)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    from accelerate import Accelerator

    use_cpu = args.cpu or not torch.cuda.is_available()
    if args.threads or use_cpu:
        torch.set_num_threads(args.threads or 1)
    rows = synthetic_rows(2000)
    loaded = None if args.tiny else embedded_model_and_tokenizer()
    if loaded is None:
        if not args.tiny:
            print("embedded model not available; using --tiny", file=sys.stderr)
        loaded = tiny_model_and_tokenizer(rows, args.tiny_tokenizer, args.tiny_hidden, args.tiny_layers)
    base_model, tokenizer, description = loaded
    variants: dict[str, tuple[str, dict]] = {}
    for name in [n.strip() for n in args.objectives.split(",") if n.strip()]:
        variants[name] = (name, {})
    for spec in args.also:
        name, *pairs = spec.split()
        options = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            options[key] = json.loads(value) if value not in ("", "None") else None
        variants[spec] = (name, options)
    if "adamw" not in variants:
        variants = {"adamw": ("adamw", {}), **variants}
    names = list(variants)

    accelerator = Accelerator(cpu=use_cpu, mixed_precision=args.mixed_precision)
    device = accelerator.device
    micro = args.batch_size // args.accumulation
    total_steps = args.warmup + args.steps * args.rounds
    step_batches = [
        make_batches(tokenizer, rows, micro, args.accumulation, args.max_length, seed=s) for s in range(total_steps)
    ]
    step_batches = [[{k: v.to(device) for k, v in b.items()} for b in micro_batches] for micro_batches in step_batches]

    runs = {}
    mvr_ratio = None
    for label in names:
        name, options = variants[label]
        model = copy.deepcopy(base_model)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
        model, optimizer = accelerator.prepare(model, optimizer)
        if name == "mvr":
            options = {"max_length": args.max_length, **options}
        objective = build_objective(name, **options)
        objective.setup(model, tokenizer, rows)
        if name == "mvr" and mvr_ratio is None and getattr(objective, "sampler", None) is not None:
            rng = random.Random(0)
            det = sampled = 0
            for micro_batches in step_batches:
                for b in micro_batches:
                    det += int(b["attention_mask"].sum())
                    sampled += int(objective.sampled_batch(b, rng)["attention_mask"].sum())
            mvr_ratio = sampled / det
        name = label
        runs[name] = {"model": model, "optimizer": optimizer, "objective": objective, "step": 0, "times": []}
    generator = torch.Generator().manual_seed(0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def one_step(run, timed: bool):
        micro_batches = step_batches[run["step"]]
        sync()
        start = time.perf_counter()
        for i, batch in enumerate(micro_batches):
            ctx = StepContext(accelerator, run["step"], i, len(micro_batches), generator=generator)
            run["objective"].micro_step(run["model"], batch, ctx)
        run["optimizer"].step()
        run["optimizer"].zero_grad(set_to_none=True)
        sync()
        if timed:
            run["times"].append(time.perf_counter() - start)
        run["step"] += 1

    for name in names:
        for _ in range(args.warmup):
            one_step(runs[name], timed=False)
    for _ in range(args.rounds):
        for name in names:
            for _ in range(args.steps):
                one_step(runs[name], timed=True)

    n_params = sum(p.numel() for p in base_model.parameters())
    print(f"model: {description}, {n_params / 1e6:.1f}M parameters")
    print(
        f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
        f"mixed precision: {args.mixed_precision}, batch {args.batch_size} = {args.accumulation} x {micro}, "
        f"max_length {args.max_length}, {args.steps * args.rounds} timed steps each after {args.warmup} warm-up"
    )
    if mvr_ratio is not None:
        print(f"mvr: the sampled view has {mvr_ratio:.2f}x the deterministic view's tokens (after truncation)")
    base = statistics.median(runs["adamw"]["times"])
    width = max(10, max(len(n) for n in names) + 2)
    print(f"{'objective':<{width}}{'ms/step':>10}{'ratio':>8}{'goal':>7}  ok")
    results = {}
    for name in names:
        med = statistics.median(runs[name]["times"])
        ratio = med / base
        goal = GOALS.get(name)  # variants (--also) have no goal
        ok = "" if goal is None else ("yes" if ratio <= goal else "NO")
        results[name] = {"ms_per_step": med * 1e3, "ratio": ratio, "goal": goal}
        print(f"{name:<{width}}{med * 1e3:>10.1f}{ratio:>8.2f}{goal if goal else '':>7}  {ok}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": description,
                    "device": str(device),
                    "args": vars(args) | {"json": str(args.json)},
                    "results": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
