"""Reading data sets from anywhere: WebDataset tar shards, parquet tables, image folders and caption
files, on local disk or any fsspec URL (`storage`), with brace patterns (`braces`) and the one tar reader
(`tarstream`); `sources` turns each into a stream of sample dicts. The embedding and evaluation jobs
(`clip_jax.jobs`) read through here.

Its dependencies (pyarrow, fsspec) come with the `jobs` extra: `pip install 'clip-jax[jobs]'`.
"""

from ..errors import require_extra

require_extra("jobs", "clip_jax.data", "pyarrow", "fsspec")
