"""What the command lines share (`clip-jax` in main.py, `clip-jax eval` in eval.py, the demo):
argparse types and argument groups, jax.distributed's start-up, the user errors they print as one line,
and warnings printed as one line.

Imports nothing heavy (no jax, no numpy), so `--help` and a mistyped argument answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator

from ..dtypes import FLOAT_DTYPES
from ..errors import ClipJaxError

# Raised by clip_jax with the path first in the message ("PATH: no such file"); Python's own OS errors on a
# file carry it in .filename.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_user_error(e: BaseException) -> bool:
    """A failure the user can act on, which the commands print as one line with no traceback: clip_jax's
    own errors (errors.ClipJaxError, whose message names the file, key or field) and OS errors on a named
    path. Anything else, a ValueError from inside numpy or jax included, is a bug: its traceback shows."""
    if isinstance(e, ClipJaxError):
        return True
    return isinstance(e, OSError) and (e.filename is not None or isinstance(e, _PATH_ERRORS))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch of 0 or a top-0 is a mistake, refused at parsing)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a process index)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_truncate_arg(p: argparse.ArgumentParser, default: bool, what: str) -> None:
    p.add_argument("--truncate", action=argparse.BooleanOptionalAction, default=default,
                   help=f"cut {what} longer than the model's context instead of refusing them "
                        f"(default: {'on' if default else 'off'})")


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", "-m", required=required,
                   help="a converted clip_jax .safetensors or a PyTorch CLIP checkpoint (anything clip_jax.load takes)")
    p.add_argument("--dtype", default="float32", choices=FLOAT_DTYPES, help="compute dtype (default: float32)")
    p.add_argument("--attention", choices=["xla", "cudnn"], default=None,
                   help="attention kernel: cudnn (NVIDIA GPUs, with --dtype bfloat16/float16) or xla (default)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="images or texts per step, over all devices (default: 256)")


def add_tokenizer_arg(p: argparse.ArgumentParser,
                      when: str = " where the checkpoint has none beside it (a big_vision .npz)") -> None:
    """--tokenizer; `when` ends its help: when the command needs one."""
    p.add_argument("--tokenizer", metavar="FILE",
                   help=f"a SigLIP's vocabulary (spiece.model, tokenizer.json, or a checkpoint folder){when}")


def add_distributed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-host (jax.distributed); run the same command in every process")
    g.add_argument("--coordinator", help="host:port of process 0's coordinator")
    g.add_argument("--num-processes", type=positive_int, help="number of processes")
    g.add_argument("--process-id", type=non_negative_int, help="this process's index, 0 to num_processes - 1")
    g.add_argument("--distributed", action="store_true",
                   help="set jax.distributed up from the environment (TPU pod slices, SLURM, Open MPI), without "
                        "the three options above")


def initialize_distributed(args: argparse.Namespace) -> None:
    """jax.distributed must start before any other JAX call."""
    if args.distributed or args.coordinator or args.num_processes or args.process_id is not None:
        from ..parallel import initialize  # here: jax only for the commands that use it (see the docstring)

        initialize(args.coordinator, args.num_processes, args.process_id)


@contextlib.contextmanager
def one_line_warnings(category: type[Warning]) -> Iterator[None]:
    """The `category` warnings raised inside the block, printed when it ends as one line each on stderr
    ("warning: ..."); any other warning as Python shows it."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", category)
            yield
    finally:  # also when the block fails: a warning may explain the error printed after it
        for w in caught:
            if issubclass(w.category, category):
                print(f"warning: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
