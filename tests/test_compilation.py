"""The persistent compilation cache and warm-up (run in subprocesses: the cache is process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import sys, numpy as np
import jax
import clip_jax
from clip_jax.compilation import enable_compilation_cache, warmup
from tests.tiny import TINY, tiny_model
enable_compilation_cache(sys.argv[1])
model = tiny_model(TINY)
warmup(model, image_batch_sizes=[2], text_batch_sizes=[3], text_lengths=[16])
jax.config.update("jax_log_compiles", True)  # from here on, any compilation is logged to stderr
out = model.encode_text(clip_jax.tokenize(["a dog", "a cat", "a bird"]))  # trimmed to 16 tokens
size = TINY.vision.image_size
model.encode_image(np.zeros((2, size, size, 3), np.uint8)).block_until_ready()
print(out.shape)
"""


def test_cache_is_written_and_reused(tmp_path):
    cache = tmp_path / "xla"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = lambda: subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=300)
    first = run()
    assert first.returncode == 0, first.stderr
    assert "(3, 16)" in first.stdout
    # warmup compiled ahead of time what the calls then ran: nothing compiled at call time.
    assert "Compiling" not in first.stderr, first.stderr
    entries = {p.name for p in cache.iterdir()}
    assert entries, "nothing was written to the compilation cache"
    second = run()
    assert second.returncode == 0, second.stderr
    # A warm process compiles nothing new: the cache holds the same entries afterwards.
    assert {p.name for p in cache.iterdir()} == entries
