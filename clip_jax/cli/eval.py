"""`clip-jax eval TASK DATA --model M`: the three evaluations of clip_jax.jobs.eval from the command line.

Prints the result (CLIP_benchmark's JSON: dataset, model, pretrained, task, metrics, language) on stdout
and, with --output, writes it there atomically (CLIP_benchmark's placeholders such as
'{dataset}_{model}_{task}.json' work; any other placeholder, or a folder that can't be written, is
refused before the evaluation starts; missing folders are made). Image features are cached on disk
(--cache), so a second task on the same data and model does not embed it again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import ModuleType

from .common import (
    add_distributed_args,
    add_model_args,
    add_tokenizer_arg,
    add_truncate_arg,
    initialize_distributed,
    one_line_warnings,
    positive_int,
)


def _common(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_tokenizer_arg(p)
    p.add_argument("--output", "-o", metavar="FILE",
                   help="also write the result JSON here; may use {dataset} {model} {pretrained} {task} {language}")
    p.add_argument("--dataset-name", help="the result's 'dataset' (default: the data set's folder name, the parent "
                                          "of a split folder such as test/; or the CSV's name)")
    p.add_argument("--model-name", help="the result's 'model' (default: the --model file's stem, or the name given)")
    p.add_argument("--pretrained",
                   help="the result's 'pretrained' (default: the --model file's name, or the name given)")
    p.add_argument("--language", default="en", help="the result's 'language' (default: en)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", metavar="DIR",
                       help="image feature cache (default: eval_features/ in clip_jax's cache, ~/.cache/clip_jax)")
    cache.add_argument("--no-cache", action="store_true", help="embed the images again, store nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_distributed_args(p)


def add_eval_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="task", required=True, metavar="TASK")

    zc = sub.add_parser("zeroshot_classification", help="zero-shot top-1/top-5 accuracy and mean per-class recall")
    zc.add_argument("data", metavar="DATA",
                    help="an ImageFolder (one subfolder per class), or CLIP_benchmark's wds_* layout")
    zc.add_argument("--split", help="the split subfolder of DATA (default: DATA itself; 'test' for the wds layout)")
    zc.add_argument("--classnames", metavar="FILE", help="class names, one a line, in sorted-folder order "
                    "(default: classnames.txt beside the data, else the folder names)")
    zc.add_argument("--templates", default="auto",
                    help="'auto' (default: the data set's zeroshot_classification_templates.txt if it has one, else "
                         "'imagenet'), 'imagenet' (OpenAI's 80), 'dataset', a file (one a line), or one template "
                         "such as 'a photo of a {c}.'")
    add_truncate_arg(zc, True, "prompts")
    _common(zc)
    zc.set_defaults(run=run_eval)

    zr = sub.add_parser("zeroshot_retrieval", help="image and text retrieval recall@k")
    zr.add_argument("data", metavar="PAIRS",
                    help="a CSV/TSV of image path + caption (a header names the columns), or a wds_* retrieval folder")
    zr.add_argument("--image-column", help="the image path column (default: image, filepath, path, file, ...)")
    zr.add_argument("--caption-column", help="the caption column (default: caption, text, title, captions)")
    zr.add_argument("--split", default="test", help="split of a wds_* folder (default: test)")
    zr.add_argument("--recall-k", type=positive_int, nargs="+", default=[1, 5, 10], help="k values (default: 1 5 10)")
    add_truncate_arg(zr, True, "captions")
    _common(zr)
    zr.set_defaults(run=run_eval)

    lp = sub.add_parser("linear_probe", help="a logistic-regression probe on the frozen image features")
    lp.add_argument("data", metavar="DATA",
                    help="a folder with train and test splits: ImageFolders or the wds_* layout")
    lp.add_argument("--train-split", default="train", help="(default: train)")
    lp.add_argument("--test-split", default="test", help="(default: test)")
    val = lp.add_mutually_exclusive_group()
    val.add_argument("--val-split", help="a validation split to choose the regularization on")
    val.add_argument("--val-proportion", type=float, default=0.2,
                     help="else this share of the training split is held out for it (default: 0.2; 0: no search, "
                          "weight decay 0)")
    lp.add_argument("--classnames", metavar="FILE", help="class names, one a line (only names the classes)")
    lp.add_argument("--fewshot-k", type=int, default=-1, help="training rows per class (default: -1, all)")
    lp.add_argument("--seed", type=int, default=0, help="for the validation split and few-shot pick (default: 0)")
    lp.add_argument("--max-iter", type=positive_int, default=1000, help="L-BFGS iterations per fit (default: 1000)")
    _common(lp)
    lp.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    # When run, not at the top: cli/main.py imports this module for its arguments, and `clip-jax --help`
    # waits neither for jax nor for the jobs extra (a missing one is a one-line error, here).
    from ..jobs.results import check_output, output_path

    if args.output:  # an unknown placeholder: refused before the work, not after it
        output_path(args.output, {})
    initialize_distributed(args)
    import jax  # when run, as above
    import jax.numpy as jnp

    from ..hub import load
    from ..jobs import eval as ev, eval_data, results

    first = jax.process_index() == 0  # the process that prints and writes the result
    if args.output and first:
        check_output(args.output)
    with one_line_warnings(ev.CacheWarning):
        data = _data(args, eval_data, ev)  # a bad data set or template fails before the model loads
        model, preprocess = load(args.model, dtype=jnp.dtype(args.dtype), attention=args.attention,
                                 tokenizer=args.tokenizer)
        metrics = _metrics(args, ev, model, preprocess, data, progress=not args.no_progress and first)
        if first:
            _report(args, results, data[0].name, metrics)
    return 0


def _data(args: argparse.Namespace, eval_data: ModuleType, ev: ModuleType) -> tuple:
    """The task's data: (data,), or (train, test, val or None) for linear_probe."""
    if args.task == "zeroshot_classification":
        data = eval_data.classification_data(args.data, args.split, args.classnames)
        ev.resolve_templates(args.templates, data)
        return (data,)
    if args.task == "zeroshot_retrieval":
        return (eval_data.retrieval_data(args.data, args.split, args.image_column, args.caption_column),)
    train = eval_data.classification_data(args.data, args.train_split, args.classnames)
    test = eval_data.classification_data(args.data, args.test_split, args.classnames)
    val = eval_data.classification_data(args.data, args.val_split, args.classnames) if args.val_split else None
    return train, test, val


def _metrics(args: argparse.Namespace, ev: ModuleType, model, preprocess, data: tuple, progress: bool) -> dict:
    cache = None if args.no_cache else (args.cache or ev.default_cache_dir())
    common = dict(batch_size=args.batch_size, cache_dir=cache, progress=progress)
    if args.task == "zeroshot_classification":
        return ev.zeroshot_classification(model, preprocess, data[0], args.templates, truncate=args.truncate,
                                          **common)
    if args.task == "zeroshot_retrieval":
        return ev.zeroshot_retrieval(model, preprocess, data[0], args.recall_k, truncate=args.truncate, **common)
    return ev.linear_probe(model, preprocess, *data, args.val_proportion or None, args.fewshot_k, args.seed,
                           args.max_iter, **common)


def _report(args: argparse.Namespace, results: ModuleType, dataset: str, metrics: dict) -> None:
    """CLIP_benchmark's result JSON on stdout, then in --output."""
    is_file = os.path.exists(args.model)
    res = results.result(args.dataset_name or dataset,
                    args.model_name or (Path(args.model).stem if is_file else str(args.model)),
                    args.pretrained or (Path(args.model).name if is_file else str(args.model)),
                    args.task, metrics, args.language)
    print(json.dumps(res), flush=True)  # first: a failed write must not lose the result
    if args.output:
        path = results.write_result(args.output, res)
        print(f"wrote {path}", file=sys.stderr)
