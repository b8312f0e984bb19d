"""The applications built on the library: `embed` (an embedding folder from images and captions, the
layout clip-retrieval and autofaiss read), `search` and `index` over such a folder, and `eval`
(CLIP_benchmark's zero-shot classification, retrieval and linear probe). The command line in
`clip_jax.cli` is a thin layer over these functions.

Their dependencies (pyarrow, fsspec, tqdm) come with the `jobs` extra: `pip install 'clip-jax[jobs]'`.
"""

from ..errors import require_extra

require_extra("jobs", "clip_jax.jobs", "pyarrow", "fsspec", "tqdm")
