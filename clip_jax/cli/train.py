"""`clip-jax train DATA... --model M -o RUN`: clip_jax.jobs.train from the command line.

    clip-jax train 'data/{00000..00127}.tar' --model ViT-B-32 -o RUN --batch-size 4096 --steps 10000 --lr 5e-4
    clip-jax train data.parquet --model ViT-B-32/openai -o RUN --batch-size 256 --epochs 3 --lr 1e-5   # fine-tune
    clip-jax train ... --lock-image                      # LiT: the image tower frozen

Running the same command again resumes the run in RUN. Prints the last metrics (JSON) on stdout when
done; the progress bar (samples/s, ETA) goes to stderr.
"""

from __future__ import annotations

import argparse
import json

from ..dtypes import FLOAT_DTYPES
from .common import add_distributed_args, add_tokenizer_arg, initialize_distributed, non_negative_int, positive_int

# clip_jax.train.LOSSES and layers.REMAT_POLICIES, spelled out: this module imports no jax (cli/main.py's docstring).
LOSSES = ("softmax", "sigmoid")
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate, a number of epochs)."""
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA",
                   help="WebDataset .tar shards or .parquet files (image + caption per sample), local or fsspec URLs, "
                        "with brace patterns ('data/{00000..00127}.tar')")
    p.add_argument("--model", "-m", required=True, metavar="M",
                   help="an open_clip architecture (ViT-B-32, ViT-B-16-SigLIP: from scratch) or model-config JSON "
                        "file, or anything clip_jax.load takes (ViT-B-32/openai, a file, hf-hub:...: fine-tuning)")
    p.add_argument("-o", "--output", required=True, metavar="RUN",
                   help="the run's folder (metrics.jsonl, tensorboard/, checkpoints/, final.safetensors); "
                        "rerun the same command to resume")
    p.add_argument("--loss", default="softmax", choices=LOSSES,
                   help="softmax (CLIP's InfoNCE) or sigmoid (SigLIP's; needs a SigLIP) (default: softmax)")
    p.add_argument("--batch-size", type=positive_int, default=256, metavar="B",
                   help="global batch: pairs per step over all processes and devices (default: 256)")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=positive_int, metavar="S", help="optimizer steps")
    length.add_argument("--epochs", type=positive_float, metavar="E",
                        help="passes over the data (parquet: its size is known)")
    p.add_argument("--lr", type=positive_float, default=5e-4, metavar="X", help="peak learning rate (default: 5e-4)")
    p.add_argument("--warmup", type=non_negative_int, default=0, metavar="W",
                   help="steps of linear warmup, then cosine decay to 0 (default: 0)")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.2, metavar="X",
                   help="AdamW's decoupled weight decay, on weights only (default: 0.2)")
    p.add_argument("--dtype", default="float32", choices=FLOAT_DTYPES,
                   help="compute dtype; params, LayerNorm and the loss stay float32 (default: float32)")
    p.add_argument("--remat", action="store_true", help="recompute each block's activations in the backward pass")
    p.add_argument("--remat-policy", default="nothing_saveable", choices=REMAT_POLICIES,
                   help="what --remat keeps (default: nothing_saveable)")
    p.add_argument("--fsdp", action="store_true",
                   help="shard params, gradients and optimizer state over the data axis (ZeRO-3)")
    p.add_argument("--lock-image", action="store_true", help="LiT: no gradient, no optimizer state for the image tower")
    p.add_argument("--lock-text", action="store_true", help="the same for the text tower")
    p.add_argument("--unlock-last", type=non_negative_int, default=0, metavar="N",
                   help="with --lock-*: train the last N blocks of the locked tower (default: 0)")
    p.add_argument("--accumulate", type=positive_int, default=1, metavar="K",
                   help="gradient cache: the batch in K chunks, the same gradient as one pass (default: 1)")
    _add_run_args(p)
    add_tokenizer_arg(p, ": needed from scratch, and for weights without one beside them (a big_vision .npz)")
    add_distributed_args(p)
    p.set_defaults(run=run_train)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save-every", type=positive_int, default=1000, metavar="K",
                   help="checkpoint every K steps (default: 1000)")
    p.add_argument("--keep", type=positive_int, default=3, metavar="N",
                   help="checkpoints kept, the newest (default: 3)")
    p.add_argument("--eval-data", metavar="DIR",
                   help="zero-shot classification data (an ImageFolder or CLIP_benchmark's wds layout), "
                        "evaluated at the end and every --eval-every steps")
    p.add_argument("--eval-every", type=positive_int, metavar="K", help="also evaluate every K steps")
    p.add_argument("--log-every", type=positive_int, default=10, metavar="K",
                   help="a metrics.jsonl line and TensorBoard scalars every K steps (default: 10)")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                   help="random init and data order (default: 0)")
    p.add_argument("--model-parallel", type=positive_int, default=1, metavar="M",
                   help="devices each model is split over (the mesh's 'model' axis; default 1)")
    p.add_argument("--image-column", metavar="NAME", help="parquet: the image column (default: image, jpg, img)")
    p.add_argument("--caption-column", metavar="NAME", help="parquet: the caption column (default: caption, text, txt)")
    p.add_argument("--num-threads", type=positive_int, metavar="N",
                   help="image decoding threads per process (default: CPU count)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--xla-cache", metavar="DIR",
                   help="keep compiled programs in DIR (JAX's persistent compilation cache), so a resumed run "
                        "doesn't compile its step again (default: off)")


def run_train(args: argparse.Namespace) -> int:
    initialize_distributed(args)
    import jax  # when run: see cli/main.py's docstring

    from ..jobs.train import TrainArgs, train

    if args.xla_cache:
        from ..compilation import enable_compilation_cache  # only with --xla-cache

        enable_compilation_cache(args.xla_cache)

    fields = set(TrainArgs.__dataclass_fields__) - {"data", "model", "output", "progress"}
    options = {k: getattr(args, k) for k in fields}
    last = train(args.data, args.model, args.output, progress=not args.no_progress, **options)
    if jax.process_index() == 0:
        print(json.dumps(last))
    return 0
