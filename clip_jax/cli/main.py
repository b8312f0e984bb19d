"""The `clip-jax` command line: convert, export, embed, classify, search, index, demo (and eval, train, in
cli/eval.py, cli/train.py).

Start-up: this module and the ones it imports at the top load no jax, numpy or model code; each run_*
function imports what its command needs when it runs, so `clip-jax --help` and a mistyped argument
answer in ~0.1 s rather than after ~2 s of imports.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from importlib.util import find_spec
from pathlib import Path

from ..dtypes import EMBEDDING_DTYPES, FLOAT_DTYPES
from ..errors import InputError, SourceFallbackWarning, decode_utf8
from .common import (
    add_distributed_args,
    add_model_args,
    add_tokenizer_arg,
    add_truncate_arg,
    initialize_distributed,
    is_user_error,
    one_line_warnings,
    positive_int,
)
from .eval import add_eval_args
from .train import add_train_args

# checkpoint.export.EXPORT_DTYPES, spelled out here: that module imports numpy (see the module docstring)
EXPORT_DTYPES = ("keep", *FLOAT_DTYPES, "fp16_mix")
HF_FOLDER = "a folder CLIPModel.from_pretrained reads"


def _add_format_and_dtype(p: argparse.ArgumentParser, formats: dict[str, str], dtypes: tuple[str, ...],
                          keep: str) -> None:
    """--format (formats: {name: what it writes}, the first the default) and --dtype (default "keep")."""
    p.add_argument("--format", default=next(iter(formats)), choices=list(formats),
                   help="; ".join(f"{name}: {what}" for name, what in formats.items()))
    p.add_argument("--dtype", default="keep", choices=dtypes,
                   help=f"dtype of the stored floating tensors (default: {keep})")


def add_convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="OpenAI .pt (TorchScript), torch.save .pt/.bin, open_clip .safetensors, or a "
                               "transformers folder (config.json + weights)")
    p.add_argument("-o", "--output", help="output file (default: SRC with the suffix .safetensors), or folder "
                                          "with --format transformers (default: SRC without its suffix)")
    _add_format_and_dtype(p, {"clip_jax": "one .safetensors (default)", "transformers": HF_FOLDER},
                          ("keep", *FLOAT_DTYPES), "keep the checkpoint's")
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--config", metavar="FILE",
                      help="the weights' open_clip config: an open_clip_config.json or a bare open_clip model config "
                           "(default: the config clip_jax's export wrote into SRC, else open_clip_config.json "
                           "beside SRC, else inferred from the weights)")
    arch.add_argument("--model", metavar="ARCH",
                      help="the weights' open_clip architecture, e.g. ViT-B-32 (exact GELU), ViT-B-32-quickgelu, "
                           "ViT-H-14, ViT-B-16-SigLIP; or a big_vision .npz's variant, e.g. So400m/14-384")
    add_tokenizer_arg(p)
    p.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> None:
    from ..checkpoint import AssumedActivationWarning, convert  # when run: see the module docstring

    with one_line_warnings(AssumedActivationWarning):
        dst = convert(args.src, args.output, dtype=args.dtype, config=args.config, model=args.model,
                      format=args.format, tokenizer=args.tokenizer)
    print(f"wrote {dst}")


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="the model to export: anything clip_jax.load takes (a clip_jax .safetensors, a PyTorch or "
                        "transformers checkpoint, a pretrained name)")
    p.add_argument("output", metavar="OUT", help="torch: a .pt/.pth/.bin (torch.save's format) or .safetensors "
                   "file, with open_clip_config.json beside it; transformers: a folder")
    _add_format_and_dtype(p, {"torch": "one file with OpenAI/open_clip names (default)", "transformers": HF_FOLDER},
                          EXPORT_DTYPES, "keep the loaded model's, float32; fp16_mix: OpenAI's release mix")
    add_tokenizer_arg(p)
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from ..checkpoint import AssumedActivationWarning  # when run: see the module docstring
    from ..checkpoint.export import export
    from ..hub import load

    with one_line_warnings(AssumedActivationWarning):
        model, _ = load(args.model, progress=False, tokenizer=args.tokenizer)
    print(f"wrote {export(model, args.output, dtype=args.dtype, format=args.format)}")


def add_embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image folders (recursive), .txt lists of image paths, globs, or image files; or WebDataset "
                        ".tar shards / .parquet files, local or fsspec URLs, with brace patterns "
                        "('data/{00000..00127}.tar'): one output shard per input shard, each process its own")
    p.add_argument("-o", "--output", required=True, help="output folder (clip-retrieval's layout); rerun to resume")
    p.add_argument("--captions", metavar="FILE",
                   help="a text file of captions, one a line (with images: line i is image i's caption)")
    add_model_args(p)
    p.add_argument("--emb-dtype", default="float16", choices=EMBEDDING_DTYPES,
                   help="dtype of the stored embeddings (default: float16, as clip-retrieval)")
    p.add_argument("--shard-size", type=positive_int, default=100_000,
                   help="image files: rows per output file, and the unit a rerun resumes from (default: 100000); "
                        "tar/parquet inputs keep one output file per input shard")
    p.add_argument("--num-threads", type=positive_int, help="image decoding threads per process (default: CPU count)")
    p.add_argument("--model-parallel", type=positive_int, default=1,
                   help="devices each model is split over (the mesh's 'model' axis; default 1: replicated)")
    p.add_argument("--image-column",
                   help="parquet: the image column, bytes or {bytes, path} (default: image, jpg, img)")
    p.add_argument("--caption-column", help="parquet: the caption column (default: caption, text, txt)")
    p.add_argument("--image-paths", action="store_true",
                   help="parquet: the image column holds paths to local files, read from this machine (by default "
                        "only image bytes are read: a path in the data is an error for that row, never opened)")
    p.add_argument("--text", action=argparse.BooleanOptionalAction, default=True,
                   help="shards: also embed the captions (txt members or --caption-column; default: on)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_truncate_arg(p, True, "captions")  # as clip-retrieval
    add_distributed_args(p)
    p.set_defaults(run=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    initialize_distributed(args)
    from ..jobs.embed import embed  # when run: see the module docstring

    if not args.inputs and not args.captions:
        raise InputError("nothing to embed: give image INPUTs and/or --captions FILE")
    s = embed(args.inputs, args.output, args.model, captions=args.captions, batch_size=args.batch_size,
              dtype=args.dtype, emb_dtype=args.emb_dtype, shard_size=args.shard_size, num_threads=args.num_threads,
              model_parallel=args.model_parallel, attention=args.attention, progress=not args.no_progress,
              truncate=args.truncate, image_column=args.image_column, caption_column=args.caption_column,
              text=args.text, image_paths=args.image_paths)
    for line in s.lines(args.output):  # each process its own line; process 0 also the job's
        print(line)
    return 0


def add_classify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders, globs or .txt lists")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="comma-separated class names, e.g. dog,cat,'a red car'")
    labels.add_argument("--labels-file", metavar="FILE", help="class names, one a line")
    p.add_argument("--templates", default="imagenet",
                   help="prompt ensemble: 'imagenet' (OpenAI's 80 templates, default), a file of templates one a "
                        "line, or one template such as 'a photo of a {}.'")
    p.add_argument("-k", "--top-k", type=positive_int, default=5, help="classes to print per image (default: 5)")
    add_truncate_arg(p, False, "prompts")
    add_model_args(p)
    add_tokenizer_arg(p)
    p.set_defaults(run=run_classify)


def _labels(args: argparse.Namespace) -> list[str]:
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
    else:
        text = decode_utf8(Path(args.labels_file).read_bytes(), args.labels_file)
        labels = [s.strip() for s in text.splitlines()]
    labels = [s for s in labels if s]
    if not labels:
        raise InputError("no labels given")
    return labels


def run_classify(args: argparse.Namespace) -> int:
    import jax.numpy as jnp  # when run: see the module docstring
    import numpy as np

    from ..data.sources import collect_images
    from ..hub import load
    from ..parallel import ShardedCLIP
    from ..zeroshot import logit_bias, logit_scale, read_templates, top_k, zeroshot_classifier

    labels, templates = _labels(args), read_templates(args.templates)
    paths = collect_images(args.images)
    if not paths:
        raise InputError("no images found in the inputs")
    model, preprocess = load(args.model, dtype=jnp.dtype(args.dtype), attention=args.attention,
                             tokenizer=args.tokenizer)
    sharded = ShardedCLIP(model, batch_size=args.batch_size)
    weights = zeroshot_classifier(sharded, labels, templates, truncate=args.truncate)
    scale, bias, failed = logit_scale(model), logit_bias(model), 0
    for batch in sharded.embed_image_files(paths, preprocess):
        for path, reason in batch.errors:
            print(f"clip-jax: {path}: {reason}", file=sys.stderr)
        failed += len(batch.errors)
        probs, idx = top_k(batch.features, weights, scale, args.top_k, bias=bias)
        for row in np.flatnonzero(batch.ok):
            print(paths[batch.start + row])
            for prob, c in zip(probs[row], idx[row]):
                print(f"  {prob:7.2%}  {labels[c]}")
    return 1 if failed else 0


def add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="an embedding folder written by `clip-jax embed`")
    p.add_argument("query", nargs="?", help="the text to search for")
    p.add_argument("--image", metavar="FILE", help="search by image: the images most like this one")
    p.add_argument("--numpy", action="store_true", help="score on the CPU with numpy, not on the JAX devices")
    p.add_argument("--exact", action="store_true", help="exact search even where `clip-jax index` built an index")
    p.add_argument("-k", "--top-k", type=positive_int, default=10, help="results (default: 10)")
    add_truncate_arg(p, False, "a query")
    p.add_argument("--model", "-m", help="the model (default: the one the folder was embedded with)")
    p.add_argument("--dtype", default=None, choices=FLOAT_DTYPES, help="compute dtype (default: the folder's)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object a line per hit: score, the input shard for shard jobs, and every metadata "
                        "column of its row (image_path, key, caption, the samples' json fields...)")
    p.set_defaults(run=run_search)


def run_search(args: argparse.Namespace) -> int:
    import jax.numpy as jnp  # when run: see the module docstring
    import numpy as np

    from ..families import family_of
    from ..hub import load
    from ..jobs.embed_folder import MANIFEST, read_manifest
    from ..jobs.search import INDEX, StaleIndexError, index_search, search, shard_files

    folder = Path(args.folder)
    if not folder.is_dir():
        raise InputError(f"{args.folder}: {'not a folder' if folder.exists() else 'no such folder'} (give the "
                         "output folder of `clip-jax embed`)")
    shard_files(folder)  # not an embedding folder: say so, not that the model is missing
    manifest = folder / MANIFEST
    info = read_manifest(manifest) if manifest.exists() else {}
    model_path = args.model or info.get("model")
    if not model_path:
        raise InputError(f"{args.folder}: no {MANIFEST} naming the model; pass --model")
    if (args.query is None) == (args.image is None):
        raise InputError("give a text QUERY or --image FILE (one of them)")
    model, preprocess = load(model_path, dtype=jnp.dtype(args.dtype or info.get("dtype", "float32")))
    if args.image is not None:
        query = np.asarray(model.encode_image(preprocess.pixels(args.image)[None]))
    else:
        tokens = family_of(model).tokenizer(model.config)([args.query], truncate=args.truncate)
        query = np.asarray(model.encode_text(tokens))
    hits = None
    if not args.exact and (Path(args.folder) / INDEX.format(space="image")).exists() and find_spec("faiss"):
        try:
            hits = index_search(args.folder, query, k=args.top_k)[0]
        except StaleIndexError as e:  # the index misses part of the folder: exact search answers for all of it
            print(f"clip-jax: warning: {e}; exact search instead", file=sys.stderr)
    if hits is None:
        hits = search(args.folder, query, k=args.top_k, device=not args.numpy)[0]
    for hit in hits:
        print(hit_json(hit) if args.json else hit_line(hit))
    return 0


def hit_line(hit) -> str:
    """One line, tab-separated: score, the image (its path as embed was given it, relative paths to where
    embed ran; or the sample's key), "in SHARD" (the input shard, for shard jobs), and its caption when
    the row has one (on one line). --json has the same fields, named, for scripts."""
    meta = hit.metadata or {}
    fields = [f"{hit.score:.4f}", str(meta.get("image_path", hit.value))]
    if hit.source is not None:
        fields.append(f"in {hit.source}")
    if meta.get("caption") is not None:
        fields.append(" ".join(str(meta["caption"]).split()))
    return "\t".join(fields)


def hit_json(hit) -> str:
    """One JSON object: score, shard (the input shard, for shard jobs), then every metadata column of the row
    (one named score or shard comes as metadata.score, metadata.shard). Values JSON can't hold (NaN, bytes,
    dates) as null or text."""
    out: dict = {"score": round(hit.score, 6)}
    if hit.source is not None:
        out["shard"] = hit.source
    for name, value in (hit.metadata or {}).items():
        out[f"metadata.{name}" if name in out else name] = _plain(value)
    text = json.dumps(out, ensure_ascii=False, allow_nan=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a name that was not UTF-8 (lone surrogates): JSON's \u escapes instead
        text = json.dumps(out, allow_nan=False, default=str)
    return text


def _plain(value):
    """A metadata value JSON can hold: NaN and inf as null, nested lists and dicts likewise."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def add_index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="an embedding folder written by `clip-jax embed`")
    p.add_argument("--factory", help="a faiss index_factory string (default: Flat below 100k rows, else IVF...,Flat)")
    p.set_defaults(run=run_index)


def run_index(args: argparse.Namespace) -> int:
    from ..jobs.search import build_index  # when run: see the module docstring

    print(f"wrote {build_index(args.folder, factory=args.factory)}")
    return 0


def version() -> str:
    """clip-jax's installed version and jax's, from the installed packages' metadata (no jax import)."""
    from importlib.metadata import PackageNotFoundError, version as installed  # when asked: see the module docstring

    def of(name: str) -> str:
        try:
            return installed(name)
        except PackageNotFoundError:
            return "not installed"

    return f"clip-jax {of('clip-jax')} (jax {of('jax')}, jaxlib {of('jaxlib')})"


class _Version(argparse.Action):
    """--version: computed when asked, not each time the parser is built."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print clip-jax's version (and jax's) and exit", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version())
        parser.exit()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clip-jax", description="OpenAI CLIP in JAX")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True)
    add_convert_args(sub.add_parser("convert", help="convert a PyTorch CLIP checkpoint to a clip_jax .safetensors"))
    add_export_args(sub.add_parser("export", help="write a model as a PyTorch (.pt, .safetensors: OpenAI/open_clip "
                                                  "names) or transformers checkpoint"))
    add_embed_args(sub.add_parser("embed", help="embed images and/or captions into a clip-retrieval folder"))
    add_classify_args(sub.add_parser("classify", help="zero-shot classify images with prompt ensembles"))
    add_search_args(sub.add_parser("search", help="the top-k images of an embedding folder for a text or an image"))
    add_eval_args(sub.add_parser("eval", help="CLIP_benchmark's evaluations: zero-shot classification, "
                                              "retrieval recall@k, linear probe"))
    add_index_args(sub.add_parser("index", help="a faiss index of an embedding folder, which search then uses"))
    add_train_args(sub.add_parser("train", help="train or fine-tune a CLIP or SigLIP from tar shards or parquet "
                                                "files; rerun to resume"))
    # Listed for --help; `main` hands the arguments after "demo" to the demo's own parser.
    sub.add_parser("demo", help="the bundled tiny model, offline: zero-shot on generated shapes (clip-jax demo --help)")
    return p


def run(p: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse and run; a user error (common.is_user_error) prints one line on stderr and returns 1, anything
    else is a bug and propagates with its traceback."""
    args = p.parse_args(argv)
    _tolerate_undecodable_names()
    try:
        with one_line_warnings(SourceFallbackWarning):  # a pretrained model loaded from its Hub copy
            return args.run(args) or 0
    except Exception as e:
        if not is_user_error(e):
            raise
        # The tokenizer's advice in the command line's terms: each command that tokenizes has --truncate.
        print(f"{p.prog}: error: {str(e).replace('pass truncate=True', 'pass --truncate')}", file=sys.stderr)
        return 1


def _tolerate_undecodable_names() -> None:
    """A file name that isn't UTF-8 reaches Python as lone surrogates; print its own bytes (as ls
    does) rather than fail with UnicodeEncodeError after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding == "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:
        from .demo import main as demo  # when run: see the module docstring

        return demo(argv[1:])
    return run(parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
