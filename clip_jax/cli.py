"""The `clip-jax` command line."""

from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError, ConversionError, convert

# Failures the user can act on: one clear line on stderr, no traceback.
USER_ERRORS = (CheckpointError, ConversionError, OSError, ValueError, KeyError)


def add_convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="OpenAI .pt (TorchScript), torch.save .pt/.bin, or open_clip .safetensors")
    p.add_argument("-o", "--output", help="output file (default: SRC with the suffix .safetensors)")
    p.add_argument("--dtype", default="keep", choices=["keep", "float32", "float16", "bfloat16"],
                   help="dtype of the stored floating tensors (default: keep the checkpoint's)")
    p.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> None:
    dst = convert(args.src, args.output, dtype=args.dtype)
    print(f"wrote {dst}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clip-jax", description="OpenAI CLIP in JAX")
    sub = p.add_subparsers(dest="command", required=True)
    add_convert_args(sub.add_parser("convert", help="convert a PyTorch CLIP checkpoint to a clip_jax .safetensors"))
    return p


def run(p: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    args = p.parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{p.prog}: error: {msg}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
