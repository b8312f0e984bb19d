"""The persistent compilation cache and warm-up (run in subprocesses: the cache is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .tiny import TINY

ROOT = Path(__file__).resolve().parents[1]

# Counts jax's own compilation-cache events (jax.monitoring): a compilation that consults the cache, one
# served from it, one written to it. Printed as JSON: during warmup, and for the whole process.
SCRIPT = r"""
import collections, json, sys, numpy as np
import jax
import clip_jax
from clip_jax.compilation import enable_compilation_cache, warmup
from tests.tiny import TINY, tiny_model

EVENTS = {"/jax/compilation_cache/compile_requests_use_cache": "requests",
          "/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "writes"}
counts = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **kw: counts.update([EVENTS.get(event, "other")]))
enable_compilation_cache(sys.argv[1])
model = tiny_model(TINY)
before = counts.copy()
warmup(model, image_batch_sizes=[2], text_batch_sizes=[3], text_lengths=[16])
during = counts - before
jax.config.update("jax_log_compiles", True)  # from here on, any compilation is logged to stderr
out = model.encode_text(clip_jax.tokenize(["a dog", "a cat", "a bird"]))  # trimmed to 16 tokens
size = TINY.vision.image_size
model.encode_image(np.zeros((2, size, size, 3), np.uint8)).block_until_ready()
print(json.dumps({"shape": list(out.shape), "warmup": during, "total": counts}))
"""


def test_cache_is_written_and_reused(tmp_path):
    """The first process writes what it compiles to the cache; the second compiles nothing: each of its
    compilations, warmup's two programs among them, is served from the cache, and none is written."""
    cache = tmp_path / "xla"
    # Without the suite's own cache settings (tests/conftest.py): the library's, as a user's process has them.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))},
           "JAX_PLATFORMS": "cpu"}

    def run() -> dict:
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        # warmup compiled ahead of time what the calls then ran: nothing compiled at call time.
        assert "Compiling" not in proc.stderr, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first = run()
    assert first["shape"] == [3, TINY.embed_dim]
    assert first["warmup"]["requests"] >= 2 and first["total"].get("hits", 0) == 0, first
    assert first["total"]["writes"] >= first["warmup"]["requests"], first
    written = {p.name for p in cache.iterdir()}
    assert written, "nothing was written to the compilation cache"

    second = run()
    assert second["warmup"].get("hits", 0) == second["warmup"]["requests"] >= 2, second
    assert second["total"].get("hits", 0) == second["total"]["requests"] and "writes" not in second["total"], second
    assert {p.name for p in cache.iterdir()} == written
