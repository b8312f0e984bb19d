"""The dtypes clip_jax knows by name, one list for the command line, the converter and the jobs.

Names only (no numpy, no ml_dtypes), so the command line can offer them without importing either;
`checkpoint/store.NUMPY_DTYPES` maps them to numpy types.
"""

from __future__ import annotations

# Floating dtypes a model computes in and a converted file stores (bfloat16 through ml_dtypes).
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
# Stored embeddings of `clip-jax embed`: float16 (clip-retrieval's choice) or float32.
EMBEDDING_DTYPES = ("float16", "float32")


def one_of(names: tuple[str, ...]) -> str:
    """"a, b or c", for messages."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
