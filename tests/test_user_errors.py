"""What used to reach the command line as a KeyError (which it no longer takes for a user error) is a
ValueError naming the mistake where it is made."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clip_jax.config import MissingTensorError, config_from_state_dict
from clip_jax.jobs import search
from clip_jax.jobs.embed_folder import read_manifest


def test_a_state_dict_without_clip_tensors():
    with pytest.raises(ValueError, match="cannot infer the architecture: the checkpoint has no 'visual.conv1.weight'"):
        config_from_state_dict({"visual.proj": np.zeros((4, 2))})
    assert issubclass(MissingTensorError, ValueError) and not issubclass(MissingTensorError, KeyError)


@pytest.mark.parametrize("call", [
    lambda folder: search.shard_files(folder, "audio"),
    lambda folder: search.search(folder, np.ones(4), space="audio"),
    lambda folder: search.index_search(folder, np.ones(4), space="audio"),
])
def test_an_unknown_search_space(tmp_path, call):
    with pytest.raises(ValueError, match="space must be one of \\('image', 'text'\\), got 'audio'"):
        call(tmp_path)


@pytest.mark.parametrize("shard", [{"items": 3, "rows": 3}, {"rows": 3, "errors": []}, [], {"items": "3", "rows": 3,
                                                                                           "errors": []}])
def test_a_manifest_whose_shard_lacks_a_field(tmp_path, shard):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format": "clip_jax.embed", "shards": {"0": shard}}))
    with pytest.raises(ValueError, match="not a valid manifest \\(shard '0' lacks its items, rows or errors\\)"):
        read_manifest(path)
