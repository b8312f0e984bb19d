"""Configs and model files from outside (issue 23, classes 4 and 9): every config source (transformers'
config.json, open_clip's config JSON, the converted file's metadata, inference from a state dict) goes
through the same validation before anything is built or a weight is read; an index.json can't recurse or
leave its folder; weights that aren't floating point are refused; and the readers are fuzzed.

Each refusal is a ClipJaxError whose message names the file and the field, and the command line prints
it as one line without a traceback.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

import clip_jax
from clip_jax.checkpoint import hf_format, store
from clip_jax.checkpoint.config_source import _from_open_clip_json, read_open_clip_config
from clip_jax.checkpoint.torch_names import to_torch_state_dict
from clip_jax.checkpoint.torch_writer import write_safetensors
from clip_jax.cli import main as cli
from clip_jax.config import (
    MAX_CONFIG_BYTES,
    CLIPConfig,
    config_from_open_clip,
    config_from_state_dict,
    parse_config_json,
)
from clip_jax.errors import ClipJaxError, InputError, LimitError

from .fuzz import FUZZ, any_bytes, bounded, mutated
from .tiny import OPEN_CLIP_TINY, TINY, tiny_params

# --- a tiny transformers folder -------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """TINY written as transformers' CLIPModel folder (config.json, model.safetensors, preprocessor)."""
    return hf_format.write_folder(tmp_path_factory.mktemp("hf") / "tiny", tiny_params(), TINY, "clip", True)


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def with_config(hf_folder: Path, dst: Path, edit) -> Path:
    """A copy of the folder whose config.json is edit(config dict), or edit's text if it returns a str."""
    folder = copy_folder(hf_folder, dst)
    cfg = json.loads((folder / "config.json").read_text())
    out = edit(cfg)
    (folder / "config.json").write_text(out if isinstance(out, str) else json.dumps(cfg))
    return folder


def setting(path: str, value):
    """An edit setting the dotted field `path` ("text_config.num_hidden_layers") to value."""
    def edit(cfg):
        *parents, leaf = path.split(".")
        for name in parents:
            cfg = cfg[name]
        cfg[leaf] = value
    return edit


def one_line_error(argv: list[str], capsys) -> str:
    """Run the command line in this process: exit status 1, and one line on stderr, no traceback."""
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


# --- transformers' config.json: the same ranges and types as every other source --------------------

HF_CASES = {
    # field path, value, the error type, what the message names
    "text_layers_20000": ("text_config.num_hidden_layers", 20_000, LimitError, "text_config.num_hidden_layers"),
    "vision_layers_20000": ("vision_config.num_hidden_layers", 20_000, LimitError,
                            "vision_config.num_hidden_layers"),
    "text_config_list": ("text_config", [1, 2], InputError, "text_config"),
    "eps_list": ("text_config.layer_norm_eps", [1e-5], InputError, "text_config.layer_norm_eps"),
    "eps_nan": ("vision_config.layer_norm_eps", math.nan, InputError, "vision_config.layer_norm_eps"),
    "eps_inf": ("vision_config.layer_norm_eps", math.inf, InputError, "vision_config.layer_norm_eps"),
    "width_str": ("text_config.hidden_size", "32", InputError, "text_config.hidden_size"),
    "heads_bool": ("vision_config.num_attention_heads", True, InputError, "vision_config.num_attention_heads"),
    "vocab_huge": ("text_config.vocab_size", 10**40, LimitError, "text_config.vocab_size"),
    "mlp_huge": ("text_config.intermediate_size", 1 << 40, LimitError, "text_config.intermediate_size"),
    "projection_0": ("projection_dim", 0, LimitError, "projection_dim"),
    "eos_bool": ("text_config.eos_token_id", False, InputError, "text_config.eos_token_id"),
    "architectures_dict": ("architectures", {"a": 1}, InputError, "architectures"),
    "model_type_list": ("model_type", ["clip"], InputError, "model_type"),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_transformers_config_is_checked_before_any_weight_is_read(hf_folder, tmp_path, monkeypatch, case):
    """Before: num_hidden_layers 20000 passed (the 256-block limit was the converted format's alone) and
    load traced a model of 20,000 blocks; text_config as a list raised AttributeError, layer_norm_eps as a
    list TypeError, a string "32" or True where an int goes and NaN/inf went through."""
    path, value, error, field = HF_CASES[case]
    if case == "model_type_list":
        folder = with_config(hf_folder, tmp_path / "f", lambda c: (c.pop("architectures"), setting(path, value)(c)))
    else:
        folder = with_config(hf_folder, tmp_path / "f", setting(path, value))

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read before the config was checked")

    monkeypatch.setattr(hf_format, "read_weights", no_weights)
    with pytest.raises(error) as info:
        clip_jax.load(folder)
    assert str(folder / "config.json") in str(info.value) and field in str(info.value), str(info.value)


def test_transformers_20000_layers_through_the_command_line(hf_folder, tmp_path, capsys):
    """`convert` of the folder: one line naming config.json and the field. Before: exit 0 after minutes."""
    folder = with_config(hf_folder, tmp_path / "f", setting("text_config.num_hidden_layers", 20_000))
    err = one_line_error(["convert", str(folder), "-o", str(tmp_path / "out.safetensors")], capsys)
    assert "config.json" in err and "text_config.num_hidden_layers" in err and "256" in err


@pytest.mark.parametrize("text, error", [("[" * 200_000, LimitError), ('{"a": ' * 100 + "1" + "}" * 100, LimitError),
                                         ("{", InputError), ("\xff", InputError), ("[]", InputError),
                                         ('{"architectures": ["CLIPModel"], "projection_dim": 1' + "0" * 5000 + "}",
                                          InputError)])
def test_config_json_nesting_and_syntax(hf_folder, tmp_path, text, error):
    """Before: 200k nested brackets raised RecursionError (json.loads recursing); a 5000-digit int a plain
    ValueError; now the depth is measured before parsing."""
    folder = with_config(hf_folder, tmp_path / "f", lambda c: text)
    with pytest.raises(error, match="config.json"):
        clip_jax.load(folder)


def test_config_json_size_cap(hf_folder, tmp_path):
    folder = with_config(hf_folder, tmp_path / "f", lambda c: " " * (MAX_CONFIG_BYTES + 1) + "{}")
    with pytest.raises(LimitError, match="config.json: over 16 MiB"):
        clip_jax.load(folder)


def test_preprocessor_config_types(hf_folder, tmp_path):
    """Before: a list as `resample` raised TypeError (unhashable), a mean of strings went through."""
    folder = copy_folder(hf_folder, tmp_path / "f")
    for pp, field in (({"resample": [3]}, "resample"), ({"image_mean": ["a", "b", "c"]}, "image_mean")):
        (folder / "preprocessor_config.json").write_text(json.dumps(pp))
        with pytest.raises(InputError, match=f"preprocessor_config.{field}"):
            clip_jax.load(folder)


# --- open_clip's config JSON ------------------------------------------------------------------------

OPEN_CLIP_CASES = {
    "layers_20000": ({"text_cfg": {"layers": 20_000}}, LimitError, "text_cfg.layers"),
    "vision_cfg_list": ({"vision_cfg": [1]}, InputError, "vision_cfg"),
    "width_str": ({"vision_cfg": {"width": "128"}}, InputError, "vision_cfg.width"),
    "heads_bool": ({"text_cfg": {"heads": True}}, InputError, "text_cfg.heads"),
    "eps_list": ({"text_cfg": {"norm_kwargs": {"eps": [1]}}}, InputError, "text_cfg.norm_kwargs.eps"),
    "norm_kwargs_list": ({"text_cfg": {"norm_kwargs": [1]}}, InputError, "text_cfg.norm_kwargs"),
    "quick_gelu_str": ({"quick_gelu": "yes"}, InputError, "quick_gelu"),
    "mlp_nan": ({"vision_cfg": {"mlp_ratio": math.nan}}, InputError, "vision_cfg.mlp_ratio"),
    "head_width_0": ({"vision_cfg": {"head_width": 0}}, LimitError, "vision_cfg.head_width"),
    "embed_dim_float": ({"embed_dim": 64.5}, LimitError, "embed_dim"),
}


def merged(base: dict, change: dict) -> dict:
    out = dict(base)
    for k, v in change.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("case", list(OPEN_CLIP_CASES))
def test_open_clip_config_fields(tmp_path, case):
    """Before: int("128") and bool("yes") turned a string into a number and True, 20,000 text layers
    passed, a list where an object goes raised TypeError or AttributeError."""
    change, error, field = OPEN_CLIP_CASES[case]
    path = tmp_path / "open_clip_config.json"
    path.write_text(json.dumps({"model_cfg": merged(OPEN_CLIP_TINY, change)}))
    with pytest.raises(error) as info:
        read_open_clip_config(path)
    assert str(path) in str(info.value) and field in str(info.value), str(info.value)


def test_open_clip_config_beside_a_file_through_load(tmp_path):
    """load("model.safetensors") with a hostile open_clip_config.json beside it: one error naming both."""
    (tmp_path / "open_clip_config.json").write_text("[" * 100_000)
    path = tmp_path / "model.safetensors"
    write_safetensors(path, to_torch_state_dict(tiny_params()))
    with pytest.raises(LimitError, match="open_clip_config.json.*nested"):
        clip_jax.load(path)


# --- inference from a state dict --------------------------------------------------------------------


def fake_state_dict(text_layers: int = 2, vision_width: int = 64) -> dict:
    """Shapes only (broadcast views: nothing allocated) of a ViT CLIP state dict, OpenAI's names."""
    z = lambda *shape: np.broadcast_to(np.float32(0), shape)
    sd = {"visual.proj": z(vision_width, 16), "visual.conv1.weight": z(vision_width, 3, 8, 8),
          "visual.positional_embedding": z(17, vision_width), "visual.ln_pre.weight": z(vision_width),
          "visual.transformer.resblocks.0.mlp.c_fc.weight": z(4 * vision_width, vision_width),
          "visual.transformer.resblocks.0.attn.in_proj_weight": z(192, 64),
          "ln_final.weight": z(64), "positional_embedding": z(77, 64), "token_embedding.weight": z(1000, 64),
          "transformer.resblocks.0.mlp.c_fc.weight": z(256, 64), "text_projection": z(64, 16)}
    for i in range(text_layers):
        sd[f"transformer.resblocks.{i}.attn.in_proj_weight"] = z(192, 64)
    return sd


def test_inferred_config_is_checked_too():
    """Before: 300 text blocks inferred from the weights passed (the limit is 256), a width of 0 raised
    ZeroDivisionError."""
    assert config_from_state_dict(fake_state_dict()).text.layers == 2
    with pytest.raises(LimitError, match="inferred from the weights.*'text.layers'"):
        config_from_state_dict(fake_state_dict(text_layers=300))
    for width in (0, 32):  # no width, or narrower than one head of OpenAI's width 64
        with pytest.raises(InputError, match="infer"):
            config_from_state_dict(fake_state_dict(vision_width=width))


def test_a_config_built_in_python_is_checked():
    """The dataclasses check their own fields, so no source can skip the validation."""
    with pytest.raises(LimitError, match="'vision.layers'"):
        clip_jax.config.VisionConfig(layers=20_000)
    with pytest.raises(InputError, match="'text.width'"):
        clip_jax.config.TextConfig(width=True)
    with pytest.raises(InputError, match="'vision'"):
        CLIPConfig(vision={"layers": 2})


# --- sharded weights: index.json --------------------------------------------------------------------


def sharded(hf_folder: Path, dst: Path, weight_map: dict, index: str = "model.safetensors.index.json") -> Path:
    """The folder with its weights renamed to a shard, and an index with this weight_map."""
    folder = copy_folder(hf_folder, dst)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


INDEX = "model.safetensors.index.json"
INDEX_CASES = {
    "itself": {"a": INDEX},
    "another_index": {"a": "pytorch_model.bin.index.json"},
    "parent": {"a": "../../etc/passwd"},
    "absolute": {"a": "/etc/passwd"},
    "backslash": {"a": "..\\x.safetensors"},
    "not_names": {"a": 3},
    "too_many": {str(i): f"s{i}.safetensors" for i in range(hf_format.MAX_SHARDS + 1)},
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_index_json_is_bounded(hf_folder, tmp_path, capsys, case):
    """Before: an index naming itself (or another index naming it back) recursed until RecursionError,
    a traceback; a shard outside the folder was already refused (kept here as a regression test)."""
    folder = sharded(hf_folder, tmp_path / "f", INDEX_CASES[case])
    if case == "another_index":  # a cycle of two
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": INDEX}}))
    with pytest.raises(ClipJaxError, match=INDEX):
        clip_jax.load(folder)
    err = one_line_error(["convert", str(folder), "-o", str(tmp_path / "out.safetensors")], capsys)
    assert INDEX in err


def test_index_json_depth_bomb(hf_folder, tmp_path):
    """Before: json.loads recursed: RecursionError."""
    folder = sharded(hf_folder, tmp_path / "f", {})
    (folder / INDEX).write_text("[" * 200_000)
    with pytest.raises(ClipJaxError, match="nested"):
        clip_jax.load(folder)


def test_valid_index_still_loads(hf_folder, tmp_path):
    from safetensors.numpy import load_file

    tensors = load_file(str(hf_folder / "model.safetensors"))
    folder = sharded(hf_folder, tmp_path / "f", {k: "model-00001-of-00001.safetensors" for k in tensors})
    model, _ = clip_jax.load(folder)
    assert model.config == TINY


# --- weights of the wrong dtype ---------------------------------------------------------------------


# TINY as an open_clip config (its heads are 16 wide: inference from the weights would assume 64)
TINY_OPEN_CLIP = {"model_cfg": {
    "embed_dim": 16, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}}


def test_tiny_open_clip_config_is_tiny():
    assert _from_open_clip_json(TINY_OPEN_CLIP, "x") == TINY


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.int32])
def test_non_float_weights_are_refused_in_every_format(hf_folder, tmp_path, capsys, dtype):
    """Before: a bool or int64 tensor was used as a weight without complaint, in every format."""
    bad = "ln_final.scale"
    params = tiny_params()
    params[bad] = params[bad].astype(dtype)
    # a converted clip_jax file
    converted = tmp_path / "converted.safetensors"
    store.save(converted, params, TINY)
    # an open_clip-named safetensors (a PyTorch checkpoint, converted in memory)
    torch_named = tmp_path / "open_clip.safetensors"
    write_safetensors(torch_named, to_torch_state_dict(params))
    (tmp_path / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP))
    # a transformers folder
    folder = tmp_path / "hf"
    hf_format.write_folder(folder, params, TINY, "clip", True)
    for src, name in ((converted, bad), (torch_named, bad), (folder, "text_model.final_layer_norm.weight")):
        with pytest.raises(ClipJaxError, match=f"{name}.*{np.dtype(dtype).name}"):
            clip_jax.load(src)
        err = one_line_error(["convert", str(src), "-o", str(tmp_path / "out.safetensors")], capsys)
        assert name in err


def flax_tree(dtype=np.float32) -> dict:
    return {"params": {"text_model": {"final_layer_norm": {"scale": np.ones(4, dtype), "bias": np.zeros(4, dtype)}},
                       "logit_scale": np.asarray(2.6, dtype)}}


def test_flax_msgpack_dtypes_and_depth():
    from flax.serialization import msgpack_serialize

    assert set(hf_format.flax_state_dict(msgpack_serialize(flax_tree()))) == {
        "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias", "logit_scale"}
    with pytest.raises(ClipJaxError, match="is of dtype bool, not floating point"):
        hf_format.flax_state_dict(msgpack_serialize(flax_tree(np.bool_)))
    deep: dict = {"w": np.ones(2, np.float32)}
    for _ in range(100):
        deep = {"a": deep}
    with pytest.raises(ClipJaxError, match="nested"):  # before: fine at 100, RecursionError past ~1000
        hf_format.flax_state_dict(msgpack_serialize(deep))


# --- fuzz (class 9) ---------------------------------------------------------------------------------

HF_CONFIG_BYTES = json.dumps(hf_format.config_to_transformers(TINY, "clip", True)).encode()
OPEN_CLIP_BYTES = json.dumps({"model_cfg": OPEN_CLIP_TINY, "preprocess_cfg": {"mean": [0.5] * 3}}).encode()
STORED_BYTES = TINY.to_json().encode()


def read_transformers_config(data: bytes):
    cfg = parse_config_json(data, "config.json")
    if not isinstance(cfg, dict):
        raise InputError("not an object")
    return hf_format.config_from_transformers(cfg)


def read_open_clip(data: bytes):
    return _from_open_clip_json(parse_config_json(data, "open_clip_config.json"), "open_clip_config.json")


@FUZZ
@given(data=any_bytes(HF_CONFIG_BYTES))
def test_fuzz_transformers_config_bytes(data):
    bounded(lambda: read_transformers_config(data))


@FUZZ
@given(data=any_bytes(OPEN_CLIP_BYTES))
def test_fuzz_open_clip_config_bytes(data):
    bounded(lambda: read_open_clip(data))


@FUZZ
@given(data=any_bytes(STORED_BYTES))
def test_fuzz_stored_config_bytes(data):
    bounded(lambda: CLIPConfig.from_json(data))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from([0, 1, -1, 2, 3, 2**31, 2**63, 10**30, 1e-300, "gelu", "argmax", "CLIPModel"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def field_paths(value, prefix=()) -> list[tuple]:
    """Every path to a value in a JSON tree (dict keys), the root's children first."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((*prefix, k))
            out += field_paths(v, (*prefix, k))
    return out


@st.composite
def with_a_field_replaced(draw, seed: dict):
    """A valid config with one field (at any depth) replaced by an arbitrary JSON value, or a new field."""
    cfg = json.loads(json.dumps(seed))
    paths = field_paths(cfg)
    path = draw(st.sampled_from(paths))
    target = cfg
    for key in path[:-1]:
        target = target[key]
    leaf = path[-1] if draw(st.booleans()) or not isinstance(target, dict) else draw(st.text(max_size=6))
    target[leaf] = draw(JSON_VALUES)
    return cfg


@FUZZ
@given(cfg=with_a_field_replaced(json.loads(HF_CONFIG_BYTES)))
def test_fuzz_transformers_config_values(cfg):
    bounded(lambda: hf_format.config_from_transformers(cfg))


@FUZZ
@given(cfg=with_a_field_replaced({"model_cfg": OPEN_CLIP_TINY, "preprocess_cfg": {"mean": [0.5] * 3}}))
def test_fuzz_open_clip_config_values(cfg):
    bounded(lambda: _from_open_clip_json(cfg, "open_clip_config.json"))
    bounded(lambda: config_from_open_clip(cfg["model_cfg"]) if isinstance(cfg.get("model_cfg"), dict) else None)


@FUZZ
@given(cfg=with_a_field_replaced(json.loads(STORED_BYTES)))
def test_fuzz_stored_config_values(cfg):
    bounded(lambda: CLIPConfig.from_dict(cfg))


def _msgpack_seed() -> bytes:
    from flax.serialization import msgpack_serialize

    return msgpack_serialize(flax_tree())


@FUZZ
@given(data=any_bytes(_msgpack_seed()))
def test_fuzz_flax_msgpack(data):
    bounded(lambda: hf_format.flax_state_dict(data))


_INDEX_SEED = json.dumps({"metadata": {"total_size": 8}, "weight_map": {
    "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}).encode()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    """One folder for every example (pytest's, so it goes with the run's others)."""
    return tmp_path_factory.mktemp("index_fuzz")


@FUZZ
@given(data=st.one_of(any_bytes(_INDEX_SEED), mutated(_INDEX_SEED)))
def test_fuzz_index_json(index_dir, data):
    index = index_dir / INDEX
    index.write_bytes(data)
    names = bounded(lambda: hf_format.shard_files(index))
    for name in names or ():
        assert os.sep not in name and not name.endswith(".index.json"), name
