"""Every format SigLIP comes in, read and written: transformers' SiglipModel folders, open_clip's timm-trunk
state dicts and model configs, big_vision's .npz; against the reference libraries (transformers 5,
open_clip, timm) with random weights.

The transformers model is small (width 64, 2 blocks, 4 heads, 32 px in patches of 8, vocabulary 100,
context 16) with its LayerNorms, biases and logit bias moved off their init values, so a tensor read into
the wrong slot shows. open_clip's ViT-B-16-SigLIP is full size (~200M parameters), built once.

Tolerance of the parity tests: float32 at matmul precision "highest"; features of magnitude ~1 and logits
(exp(t) * cos + b with t, b near init) within 1e-5 of transformers' (measured: 1.7e-6 at most). Every
name-and-layout test is exact (np.array_equal): conversions only move and reshape numbers.
"""

from __future__ import annotations

import inspect
import json
import re
import zipfile
from dataclasses import replace

import jax
import numpy as np
import pytest
import torch
from hypothesis import given

from .fuzz import FUZZ, bounded, mutated

transformers = pytest.importorskip("transformers")

from clip_jax import model as clip_model  # noqa: E402
from clip_jax.checkpoint import (  # noqa: E402
    big_vision,
    read_checkpoint,  # noqa: E402
    siglip_hf,
    siglip_names,
)
from clip_jax.checkpoint.siglip_names import (  # noqa: E402
    HF,
    OPEN_CLIP,
    from_ours,
    is_open_clip_siglip,
    to_ours,
)
from clip_jax.checkpoint.torch_files import LazyArray  # noqa: E402
from clip_jax.config import parse_config_json  # noqa: E402
from clip_jax.errors import ClipJaxError, InputError  # noqa: E402
from clip_jax.families import family_of  # noqa: E402
from clip_jax.siglip_config import (  # noqa: E402
    SiglipConfig,
    SiglipTextConfig,
    SiglipVisionConfig,
    siglip_config_from_state_dict,
)

ATOL = 1e-5
HEADS = 4
SMALL_TEXT = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=HEADS, max_position_embeddings=16, projection_size=64, bos_token_id=None,
                  eos_token_id=1, pad_token_id=1)
SMALL_VISION = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=HEADS,
                    image_size=32, patch_size=8)


def _numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def hf_model():
    """A small random SiglipModel, its LayerNorms, biases, logit scale and bias moved off init."""
    torch.manual_seed(0)
    config = transformers.SiglipConfig(text_config=SMALL_TEXT, vision_config=SMALL_VISION)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("weight") or "norm" in name or name.startswith("logit"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def hf_sd(hf_model) -> dict[str, np.ndarray]:
    return _numpy(hf_model)


@pytest.fixture(scope="module")
def ours(hf_sd) -> dict[str, np.ndarray]:
    return to_ours(hf_sd, HF, "clip")


@pytest.fixture(scope="module")
def config(ours) -> SiglipConfig:
    return siglip_config_from_state_dict(ours, heads=(HEADS, HEADS))


@pytest.fixture(scope="module")
def hf_folder(hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("siglip_hf")
    hf_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def open_clip_model():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(1)
    return open_clip.create_model("ViT-B-16-SigLIP", pretrained=None).eval()


@pytest.fixture(scope="module")
def small_open_clip():
    """open_clip's ViT-B-16-SigLIP with one trunk block and a small text tower (width 64, one block, 100
    tokens of context 16), its biases, norms, logit scale and bias off init: (model, its model config)."""
    open_clip = pytest.importorskip("open_clip")
    cfg = open_clip.get_model_config("ViT-B-16-SigLIP")
    cfg = {**cfg, "text_cfg": {**cfg["text_cfg"], "width": 64, "heads": 4, "layers": 1, "vocab_size": 100,
                               "context_length": 16}}
    torch.manual_seed(2)
    model = open_clip.model.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"}).eval()
    model.visual.trunk.blocks = model.visual.trunk.blocks[:1]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name.startswith(("logit", "text.ln")):
                p.add_(torch.randn_like(p) * 0.1)
    return model, cfg


# --- transformers: names ------------------------------------------------------------------------------


def test_hf_names_round_trip(hf_sd, ours):
    """transformers -> ours -> transformers: the same names, shapes, dtypes and numbers; q, k, v stacked
    in that order, the 1-element logit scale a scalar."""
    back = dict(from_ours(ours, HF, "clip", (HEADS, HEADS)))
    assert sorted(back) == sorted(hf_sd)
    for name, value in hf_sd.items():
        assert back[name].shape == value.shape and back[name].dtype == value.dtype, name
        assert np.array_equal(back[name], value), name
    block = "vision_model.encoder.layers.1.self_attn."
    stacked = np.concatenate([hf_sd[f"{block}{p}_proj.weight"] for p in "qkv"])
    assert np.array_equal(ours["visual.transformer.resblocks.1.attn.in_proj_weight"], stacked)
    assert ours["logit_bias"].shape == () and ours["logit_bias"] == hf_sd["logit_bias"][0]
    assert np.array_equal(ours["text.text_projection.bias"], hf_sd["text_model.head.bias"])


def test_hf_names_report_every_problem(hf_sd):
    broken = dict(hf_sd)
    del broken["vision_model.head.probe"]
    broken["text_model.extra.weight"] = np.zeros(3, np.float32)
    broken["vision_model.embeddings.patch_embedding.weight"] = np.zeros((4, 3), np.float32)
    with pytest.raises(ClipJaxError, match=r"missing: vision_model\.head\.probe.*unexpected: text_model\.extra"):
        to_ours(broken, HF, "clip")
    broken = {**hf_sd, "logit_bias": np.zeros(3, np.float32)}
    with pytest.raises(ClipJaxError, match=r"wrong shape: logit_bias \(3,\)"):
        to_ours(broken, HF, "clip")
    with pytest.raises(ClipJaxError, match="text_model.embeddings.token_embedding.weight.*int64"):
        to_ours({**hf_sd, "text_model.embeddings.token_embedding.weight": np.zeros((100, 64), np.int64)}, HF, "clip")


# --- transformers: config.json ------------------------------------------------------------------------


def test_hf_config_from_transformers_own(hf_model, config):
    """transformers' own config.json (to_dict) reads as the config the weights' shapes say."""
    cfg = json.loads(hf_model.config.to_json_string())
    assert siglip_hf.siglip_config_from_hf(cfg) == config
    exact = {**cfg, "text_config": {**cfg["text_config"], "hidden_act": "gelu", "layer_norm_eps": 1e-5},
             "vision_config": {**cfg["vision_config"], "layer_norm_eps": 1e-5}}
    read = siglip_hf.siglip_config_from_hf(exact)
    assert (read.text.activation, read.vision.activation, read.layer_norm_eps) == ("gelu", "gelu_tanh", 1e-5)


@pytest.mark.parametrize("kind", ["clip", "text", "vision"])
def test_hf_config_round_trip(config, kind):
    cfg = siglip_hf.siglip_config_to_hf(config, kind)
    read = siglip_hf.siglip_config_from_hf(cfg)
    assert siglip_hf.siglip_kind(cfg) == kind
    if kind != "vision":
        assert read.text == config.text and read.embed_dim == config.embed_dim
    if kind != "text":
        assert read.vision == config.vision


def _edit(cfg: dict, section: str, **change) -> dict:
    cfg = json.loads(json.dumps(cfg))
    (cfg[section] if section else cfg).update(change)
    return cfg


@pytest.mark.parametrize("section, change, message", [
    ("text_config", dict(hidden_act="relu"), r"text_config\.hidden_act='relu'"),
    ("vision_config", dict(num_channels=4), r"vision_config\.num_channels=4"),
    ("vision_config", dict(vision_use_head=False), r"vision_config\.vision_use_head=False"),
    ("vision_config", dict(layer_norm_eps=1e-5), r"vision_config\.layer_norm_eps=1e-05"),
    ("vision_config", dict(hidden_size="big"), r"vision_config\.hidden_size"),
    ("text_config", dict(num_hidden_layers=10**6), r"text_config\.num_hidden_layers"),
    ("text_config", dict(projection_size=32), r"text_config\.projection_size=32"),
    ("", dict(architectures=["SiglipForImageClassification"]), r"architectures="),
    ("", dict(model_type="siglip2"), "NaFlex"),
    ("", dict(architectures=["Siglip2Model"]), "NaFlex"),
])
def test_hf_config_refusals_name_the_field(config, section, change, message):
    cfg = _edit(siglip_hf.siglip_config_to_hf(config), section, **change)
    with pytest.raises(InputError, match=message):
        siglip_hf.siglip_config_from_hf(cfg, "config.json")


def test_hf_siglip2_naflex_refused():
    """transformers' own Siglip2 (NaFlex) config.json is refused, naming NaFlex."""
    cfg = json.loads(transformers.Siglip2Config().to_json_string())
    with pytest.raises(InputError, match="NaFlex"):
        siglip_hf.siglip_config_from_hf(cfg)


def test_hf_preprocessor_config(config, tmp_path):
    """preprocessor_config.json's mean, std and resample are read; the one written is SiglipImageProcessor's."""
    processor = transformers.SiglipImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25], resample=2)
    read = siglip_hf.siglip_config_from_hf(siglip_hf.siglip_config_to_hf(config), "", processor.to_dict())
    assert (read.image_mean, read.image_std, read.interpolation) == ((0.4, 0.5, 0.6), (0.2, 0.3, 0.25), "bilinear")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(siglip_hf.siglip_preprocessor_config(read)))
    loaded = transformers.SiglipImageProcessor.from_pretrained(tmp_path)
    assert list(loaded.image_mean) == [0.4, 0.5, 0.6] and list(loaded.image_std) == [0.2, 0.3, 0.25]
    assert int(loaded.resample) == 2 and dict(loaded.size) == {"height": 32, "width": 32}


# --- transformers: folders ----------------------------------------------------------------------------


def test_hf_folder_read(hf_folder, ours, config):
    read_config, read, kind = siglip_hf.read_siglip_state_dict(hf_folder)
    assert (read_config, kind) == (config, "clip")
    assert sorted(read) == sorted(ours) and all(np.array_equal(read[k], ours[k]) for k in ours)
    assert siglip_hf.is_siglip_folder(hf_folder)


@pytest.mark.parametrize("cls, kind", [("SiglipTextModel", "text"), ("SiglipVisionModel", "vision")])
def test_hf_tower_folders(hf_model, ours, tmp_path, cls, kind):
    """A single tower as transformers 5 saves it (no prefix) reads as the model's tower."""
    tower = hf_model.text_model if kind == "text" else hf_model.vision_model
    getattr(transformers, cls)._from_config(tower.config).save_pretrained(tmp_path)  # a fresh tower of the shape
    tower_sd = _numpy(tower)
    torch_tower = getattr(transformers, cls).from_pretrained(tmp_path)
    torch_tower.load_state_dict({k: torch.from_numpy(v) for k, v in tower_sd.items()})
    torch_tower.save_pretrained(tmp_path)
    _, read, read_kind = siglip_hf.read_siglip_state_dict(tmp_path)
    prefix = "text." if kind == "text" else "visual."
    assert read_kind == kind
    assert sorted(read) == sorted(k for k in ours if k.startswith(prefix))
    assert all(np.array_equal(read[k], ours[k]) for k in read)


@pytest.mark.parametrize("save", [dict(max_shard_size="100KB"), dict(safe_serialization=False)],
                         ids=["sharded", "bin"])
def test_hf_folder_sharded_or_bin(hf_model, ours, tmp_path, save):
    """Sharded safetensors (an index) and pytorch_model.bin (the safe unpickler) read alike."""
    hf_model.save_pretrained(tmp_path, **save)
    _, read, _ = siglip_hf.read_siglip_state_dict(tmp_path)
    assert sorted(read) == sorted(ours) and all(np.array_equal(read[k], ours[k]) for k in ours)


@pytest.mark.parametrize("edit, needles", [
    (lambda sd: sd.pop("vision_model.head.probe"), ["missing: vision_model.head.probe"]),
    (lambda sd: sd.update({"text_model.head.weight": np.zeros((64, 32), np.float32)}), ["text.text_projection"]),
    (lambda sd: sd.update({"logit_bias": np.zeros(1, np.int64)}), ["logit_bias", "int64"]),
    (lambda sd: sd.update({"vision_model.encoder.layers.7.mlp.fc1.bias": np.zeros(96, np.float32)}),
     ["missing: vision_model.encoder.layers.2"]),
])
def test_hf_folder_bad_weights(hf_folder, hf_sd, tmp_path, edit, needles):
    """Weights that don't fit the config.json: the project's error, naming the folder's file and tensor."""
    from safetensors.numpy import save_file

    sd = dict(hf_sd)
    edit(sd)
    (tmp_path / "config.json").write_bytes((hf_folder / "config.json").read_bytes())
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ClipJaxError) as info:
        siglip_hf.read_siglip_folder(tmp_path)
    assert str(tmp_path) in str(info.value) and all(n in str(info.value) for n in needles), info.value


def test_is_siglip_folder(tmp_path, hf_folder):
    assert not siglip_hf.is_siglip_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
    assert not siglip_hf.is_siglip_folder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert not siglip_hf.is_siglip_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    assert siglip_hf.is_siglip_folder(tmp_path)  # read_siglip_folder refuses it, naming NaFlex


@pytest.mark.parametrize("kind, cls", [("clip", "SiglipModel"), ("text", "SiglipTextModel"),
                                       ("vision", "SiglipVisionModel")])
def test_hf_folder_written_loads_strictly(ours, config, tmp_path, kind, cls):
    """write_siglip_folder -> transformers' from_pretrained: nothing missing, unexpected or mis-shaped, the
    same weights; read back, the same config and weights."""
    prefix = {"clip": "", "text": "text.", "vision": "visual."}[kind]
    params = {k: v for k, v in ours.items() if k.startswith(prefix)}
    siglip_hf.write_siglip_folder(tmp_path, params, config, kind)
    model, info = getattr(transformers, cls).from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    written = dict(from_ours(params, HF, kind, (HEADS, HEADS)))
    if kind != "clip":
        written = {k.split("_model.", 1)[1] if k.startswith(("text_model.", "vision_model.")) else k: v
                   for k, v in written.items()}
    loaded = _numpy(model)
    assert sorted(loaded) == sorted(written)
    assert all(np.array_equal(loaded[k], written[k]) for k in written)
    read_config, read, read_kind = siglip_hf.read_siglip_state_dict(tmp_path)
    assert read_kind == kind and all(np.array_equal(read[k], params[k]) for k in params)
    checkpoint = siglip_hf.read_siglip_folder(tmp_path)
    assert (checkpoint.kind, checkpoint.projection) == (kind, kind != "vision")
    built = clip_model.build(checkpoint.config, checkpoint.params, **family_of(config).build_args(kind))
    assert sorted(clip_model.flat_params(built)) == sorted(checkpoint.params)
    if kind == "clip":
        assert read_config == config
        assert (tmp_path / "preprocessor_config.json").is_file()


# --- open_clip ----------------------------------------------------------------------------------------


def test_open_clip_names_round_trip(open_clip_model):
    """open_clip's ViT-B-16-SigLIP -> ours -> open_clip: identical; the text tower's names are ours already."""
    sd = _numpy(open_clip_model)
    assert is_open_clip_siglip(sd) and not is_open_clip_siglip(["logit_bias", "vision_model.head.probe"])
    ours = to_ours(sd, OPEN_CLIP, "clip")
    assert all(np.array_equal(ours[k], v) for k, v in sd.items() if k.startswith("text."))
    q_kv = np.concatenate([sd["visual.trunk.attn_pool.q.weight"], sd["visual.trunk.attn_pool.kv.weight"]])
    assert np.array_equal(ours["visual.attn_pool.attn.in_proj_weight"], q_kv)
    back = dict(from_ours(ours, OPEN_CLIP, "clip", (12, 12)))
    assert sorted(back) == sorted(sd)
    assert all(back[k].shape == v.shape and np.array_equal(back[k], v) for k, v in sd.items())
    config, _ = siglip_names.open_clip_siglip(sd, _open_clip_config("ViT-B-16-SigLIP"))
    b16 = SiglipConfig.from_name("B/16")  # timm's vit_base_patch16_siglip_224 and SigLIP 1's text: exact GELU
    assert config == replace(b16, vision=replace(b16.vision, activation="gelu"),
                             text=replace(b16.text, activation="gelu"), image_processor="open_clip",
                             tokenizer_style="open_clip")
    exported, exported_cfg = siglip_names.open_clip_export(ours, config)
    assert sorted(exported) == sorted(sd) and all(np.array_equal(exported[k], v) for k, v in sd.items())
    cfg = _open_clip_config("ViT-B-16-SigLIP")
    assert exported_cfg["model_cfg"]["vision_cfg"] == cfg["vision_cfg"]
    assert {k: v for k, v in exported_cfg["model_cfg"]["text_cfg"].items() if k != "hf_tokenizer_name"} == {
        k: v for k, v in cfg["text_cfg"].items() if k != "hf_tokenizer_name"}


def test_open_clip_file_read_exported_and_built(small_open_clip, tmp_path):
    """An open_clip SigLIP .safetensors with its open_clip_config.json beside -> Checkpoint (flat params,
    lazily) -> a model within ATOL of open_clip's (timm's trunk here is exact GELU, as the config read
    says); open_clip_export of the params is open_clip's state dict again, loaded strictly."""
    from safetensors.numpy import save_file

    reference, cfg = small_open_clip
    sd = _numpy(reference)
    save_file(sd, tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    with pytest.raises(ClipJaxError, match=r"missing: visual\.transformer\.resblocks\.1\."):  # timm says 12
        read_checkpoint(tmp_path / "open_clip_model.safetensors")
    config, ours = siglip_names.open_clip_siglip(sd, cfg)
    config = replace(config, vision=replace(config.vision, layers=1))
    assert (config.vision.activation, config.text.activation) == ("gelu", "gelu")
    checkpoint = siglip_names.as_checkpoint(ours, config, "clip", "open_clip", tmp_path)
    model = clip_model.build(checkpoint.config, checkpoint.params)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 224, 224, 3), dtype=np.float32)
    tokens = rng.integers(0, 100, (3, 16)).astype(np.int32)
    with jax.default_matmul_precision("highest"):
        image_features, text_features = model.encode_image(images), model.encode_text(tokens)
    with torch.no_grad():
        ref_image = reference.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
        ref_text = reference.encode_text(torch.from_numpy(tokens).long()).numpy()
    np.testing.assert_allclose(np.asarray(image_features), ref_image, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(text_features), ref_text, atol=ATOL, rtol=0)
    # the model's flat params back to open_clip's names (open_clip_export's state dict; its config needs
    # a trunk timm has: test_open_clip_names_round_trip)
    exported = dict(from_ours(siglip_names.torch_style(checkpoint.params, config), OPEN_CLIP, "clip", (12, 4)))
    assert sorted(exported) == sorted(sd) and all(np.array_equal(exported[k], v) for k, v in sd.items())
    missing, unexpected = reference.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()})
    assert not missing and not unexpected


def test_open_clip_file_read_by_read_checkpoint(open_clip_model, tmp_path):
    """checkpoint.read_checkpoint (load's path for a file) reads an open_clip SigLIP file through these
    tables: without a config, the shapes' (B/16, open_clip's exact GELU), lazily."""
    from safetensors.numpy import save_file

    save_file(_numpy(open_clip_model), tmp_path / "open_clip_model.safetensors")
    config, params, _ = read_checkpoint(tmp_path / "open_clip_model.safetensors", lazy=True)
    expected = siglip_names.siglip_config_from_open_clip(_open_clip_config("ViT-B-16-SigLIP"))
    assert (config.vision, config.text.activation) == (expected.vision, expected.text.activation)
    assert all(isinstance(v, LazyArray) for v in params.values())


def test_writers_take_flat_params(ours, config, tmp_path):
    """write_siglip_folder and write_big_vision take a model's flat clip_jax params as well as ours."""
    flat = siglip_hf.read_siglip_folder(
        siglip_hf.write_siglip_folder(tmp_path / "a", ours, config)).params
    assert any(k.endswith(".kernel") for k in flat)
    siglip_hf.write_siglip_folder(tmp_path / "b", flat, config)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    big_vision.write_big_vision(tmp_path / "a.npz", ours, config)
    big_vision.write_big_vision(tmp_path / "b.npz", flat, config)
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    with pytest.raises(ClipJaxError, match="not params of this SigLIP"):
        big_vision.write_big_vision(tmp_path / "c.npz", {**flat, "visual.extra.kernel": flat["logit_bias"]}, config)


def _open_clip_config(name: str) -> dict:
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_model_config(name)


def _open_clip_siglips() -> list[str]:
    try:
        import open_clip
    except ImportError:
        return []
    return [m for m in open_clip.list_models() if "SigLIP" in m]


@pytest.mark.parametrize("name", _open_clip_siglips())
def test_open_clip_configs(name):
    """Each of open_clip's SigLIP configs: read as the released shape of its name, and written back as
    open_clip has it (but the tokenizer's name); the i18n So400m without a text Linear is refused."""
    cfg = _open_clip_config(name)
    if cfg["text_cfg"].get("proj_type") == "none":
        with pytest.raises(InputError, match="text_cfg.proj_type"):
            siglip_names.siglip_config_from_open_clip(cfg)
        return
    config = siglip_names.siglip_config_from_open_clip(cfg)
    released = SiglipConfig.from_name(name)
    for tower in ("vision", "text"):
        for field in ("width", "layers", "heads", "mlp_width"):
            assert getattr(getattr(config, tower), field) == getattr(getattr(released, tower), field), (tower, field)
    assert (config.vision.image_size, config.vision.patch_size) == (released.vision.image_size,
                                                                    released.vision.patch_size)
    back = siglip_names.siglip_config_to_open_clip(config)
    for section in ("vision_cfg", "text_cfg"):
        theirs = {k: v for k, v in cfg[section].items() if k != "hf_tokenizer_name"}
        assert {k: v for k, v in back[section].items() if k != "hf_tokenizer_name"} == theirs, section
    assert back["embed_dim"] == cfg["embed_dim"]


def test_timm_table_is_timms():
    """TIMM_MODELS says of each trunk what timm's own definition does: patch, width, depth, heads, MLP,
    and tanh GELU exactly where timm sets act_layer='gelu_tanh'."""
    timm = pytest.importorskip("timm")
    from clip_jax.siglip_config import TOWERS

    for name, (tower, patch, _, act) in siglip_names.TIMM_MODELS.items():
        source = inspect.getsource(timm.models._registry.model_entrypoint(name))
        said = {k: float(v) for k, v in re.findall(r"(patch_size|embed_dim|depth|num_heads|mlp_ratio)=([\d.]+)",
                                                   source)}
        width, layers, heads, mlp = TOWERS[tower]
        assert (said["patch_size"], said["embed_dim"], said["depth"], said["num_heads"]) == (patch, width, layers,
                                                                                             heads), name
        assert int(width * said.get("mlp_ratio", 4.0)) == mlp, name
        assert ("gelu_tanh" in source) == (act == "gelu_tanh"), name


def test_open_clip_config_builds_the_model(open_clip_model):
    """siglip_config_to_open_clip's model config builds, in open_clip, a model of open_clip's shapes."""
    open_clip = pytest.importorskip("open_clip")
    config = siglip_names.siglip_config_from_open_clip(_open_clip_config("ViT-B-16-SigLIP"))
    cfg = siglip_names.siglip_config_to_open_clip(config)
    with torch.device("meta"):  # shapes only
        built = open_clip.model.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"})
    assert {k: tuple(v.shape) for k, v in built.state_dict().items()} == {
        k: tuple(v.shape) for k, v in open_clip_model.state_dict().items()}


def test_open_clip_trunk_of_another_gelu():
    """big_vision's B/16 is tanh GELU; timm's B/16 SigLIP trunk exact: refused unless exact=False."""
    b16 = SiglipConfig.from_name("B/16")
    with pytest.raises(InputError, match="no timm SigLIP trunk.*exact=False"):
        siglip_names.siglip_config_to_open_clip(b16)
    assert siglip_names.siglip_config_to_open_clip(b16, exact=False)["vision_cfg"]["timm_model_name"] == \
        "vit_base_patch16_siglip_224"
    so400m = SiglipConfig.from_name("So400m/16-256")  # timm has it in tanh GELU
    assert siglip_names.timm_model_name(so400m.vision) == "vit_so400m_patch16_siglip_256"


def test_open_clip_refusals():
    cfg = _open_clip_config("ViT-B-16-SigLIP")
    for section, change, field in [("text_cfg", {"no_causal_mask": False}, "text_cfg.no_causal_mask"),
                                   ("text_cfg", {"act_kwargs": {"approximate": "none", "x": 1}}, "act_kwargs"),
                                   ("vision_cfg", {"timm_pool": "avg"}, "vision_cfg.timm_pool"),
                                   ("vision_cfg", {"timm_model_name": "vit_base_patch16_224"}, "timm_model_name"),
                                   ("text_cfg", {"norm_kwargs": {"eps": 1e-5}}, "eps")]:
        with pytest.raises(InputError, match=re.escape(field)):
            siglip_names.siglip_config_from_open_clip(_edit(cfg, section, **change))


# --- big_vision ---------------------------------------------------------------------------------------


def conversion_script_inverse(hf_sd: dict[str, np.ndarray], heads: int, scanned: bool = False
                              ) -> dict[str, np.ndarray]:
    """big_vision's arrays from transformers' state dict: the inverse of transformers'
    convert_siglip_to_hf.py (create_rename_keys, rename_key, read_in_q_k_v_head, split_to_layers),
    written here from that script's mapping, independently of clip_jax's tables."""
    def dense(w):  # rename_key: a Linear weight is kernel.T
        return w.T

    out = {"params/t": hf_sd["logit_scale"].reshape(1), "params/b": hf_sd["logit_bias"].reshape(1)}
    emb = "vision_model.embeddings."
    out["params/img/embedding/kernel"] = hf_sd[emb + "patch_embedding.weight"].transpose(2, 3, 1, 0)
    out["params/img/embedding/bias"] = hf_sd[emb + "patch_embedding.bias"]
    out["params/img/pos_embedding"] = hf_sd[emb + "position_embedding.weight"][None]
    out["params/txt/Embed_0/embedding"] = hf_sd["text_model.embeddings.token_embedding.weight"]
    out["params/txt/pos_embedding"] = hf_sd["text_model.embeddings.position_embedding.weight"][None]
    for theirs, ours in [("img/Transformer/encoder_norm", "vision_model.post_layernorm"),
                         ("txt/Encoder_0/encoder_norm", "text_model.final_layer_norm"),
                         ("img/MAPHead_0/LayerNorm_0", "vision_model.head.layernorm")]:
        out[f"params/{theirs}/scale"], out[f"params/{theirs}/bias"] = hf_sd[ours + ".weight"], hf_sd[ours + ".bias"]
    for theirs, ours in [("txt/head", "text_model.head"),
                         ("img/MAPHead_0/MlpBlock_0/Dense_0", "vision_model.head.mlp.fc1"),
                         ("img/MAPHead_0/MlpBlock_0/Dense_1", "vision_model.head.mlp.fc2")]:
        out[f"params/{theirs}/kernel"] = dense(hf_sd[ours + ".weight"])
        out[f"params/{theirs}/bias"] = hf_sd[ours + ".bias"]
    out["params/img/MAPHead_0/probe"] = hf_sd["vision_model.head.probe"]
    d = hf_sd["vision_model.head.probe"].shape[-1]
    mha = "params/img/MAPHead_0/MultiHeadDotProductAttention_0"
    w, b = hf_sd["vision_model.head.attention.in_proj_weight"], hf_sd["vision_model.head.attention.in_proj_bias"]
    for i, p in enumerate(("query", "key", "value")):  # read_in_q_k_v_head: kernel.reshape(-1, D).T, stacked
        out[f"{mha}/{p}/kernel"] = w[i * d:(i + 1) * d].T.reshape(d, heads, -1)
        out[f"{mha}/{p}/bias"] = b[i * d:(i + 1) * d].reshape(heads, -1)
    out[f"{mha}/out/kernel"] = hf_sd["vision_model.head.attention.out_proj.weight"].T.reshape(heads, -1, d)
    out[f"{mha}/out/bias"] = hf_sd["vision_model.head.attention.out_proj.bias"]
    for tower, theirs in (("vision_model", "img/Transformer"), ("text_model", "txt/Encoder_0")):
        n = len({k.split(".")[3] for k in hf_sd if k.startswith(f"{tower}.encoder.layers.")})
        for i in range(n):
            src, dst = f"{tower}.encoder.layers.{i}.", f"params/{theirs}/encoderblock_{i}/"
            for ln, norm in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
                out[f"{dst}{ln}/scale"] = hf_sd[f"{src}{norm}.weight"]
                out[f"{dst}{ln}/bias"] = hf_sd[f"{src}{norm}.bias"]
            for dn, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
                out[f"{dst}MlpBlock_0/{dn}/kernel"] = dense(hf_sd[f"{src}mlp.{fc}.weight"])
                out[f"{dst}MlpBlock_0/{dn}/bias"] = hf_sd[f"{src}mlp.{fc}.bias"]
            for p, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
                # rename_key: reshape(-1, D) then .T -> back: .T then reshape(D, heads, head_dim)
                out[f"{dst}MultiHeadDotProductAttention_0/{p}/kernel"] = dense(
                    hf_sd[f"{src}self_attn.{proj}.weight"]).reshape(d, heads, -1)
                out[f"{dst}MultiHeadDotProductAttention_0/{p}/bias"] = hf_sd[f"{src}self_attn.{proj}.bias"].reshape(
                    heads, -1)
            out[f"{dst}MultiHeadDotProductAttention_0/out/kernel"] = dense(
                hf_sd[f"{src}self_attn.out_proj.weight"]).reshape(heads, -1, d)
            out[f"{dst}MultiHeadDotProductAttention_0/out/bias"] = hf_sd[f"{src}self_attn.out_proj.bias"]
    if scanned:  # split_to_layers' inverse: encoderblock_{i}/X stacked as encoderblock/X
        stacks: dict[str, list] = {}
        for k in sorted(k for k in out if re.search(r"/encoderblock_\d+/", k)):
            stacks.setdefault(re.sub(r"/encoderblock_\d+/", "/encoderblock/", k), []).append(
                (int(re.search(r"encoderblock_(\d+)", k)[1]), out.pop(k)))
        out.update({k: np.stack([a for _, a in sorted(v)]) for k, v in stacks.items()})
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


@pytest.mark.parametrize("scanned, save", [(False, np.savez), (True, np.savez), (False, np.savez_compressed)])
def test_big_vision_read_as_transformers_converts(hf_sd, ours, config, tmp_path, scanned, save):
    """A .npz laid out as transformers' conversion script reads it reads as the transformers model's
    weights; the heads come from the attention kernels (4, not the width // 64 = 1 a guess would give)."""
    path = tmp_path / "bv.npz"
    save(path, **conversion_script_inverse(hf_sd, HEADS, scanned))
    read_config, read = big_vision.read_big_vision_state_dict(path)
    assert read_config == config and (read_config.vision.heads, read_config.text.heads) == (HEADS, HEADS)
    assert sorted(read) == sorted(ours)
    for k, v in ours.items():
        assert isinstance(read[k], LazyArray) and np.array_equal(np.asarray(read[k]), v), k
    assert big_vision.is_big_vision_npz(path) and not big_vision.is_big_vision_npz(tmp_path / "none.npz")


def test_big_vision_write_read_round_trip(hf_sd, ours, config, tmp_path):
    """write_big_vision writes the conversion script's layout (every name and array of the test's own
    inverse, exactly), which reads back to the same params."""
    path = big_vision.write_big_vision(tmp_path / "out.npz", ours, config)
    with np.load(path, allow_pickle=False) as npz:
        written = {k: npz[k] for k in npz.files}
    expected = conversion_script_inverse(hf_sd, HEADS)
    assert sorted(written) == sorted(expected)
    assert all(written[k].shape == v.shape and np.array_equal(written[k], v) for k, v in expected.items())
    read_config, read = big_vision.read_big_vision_state_dict(path)
    assert read_config == config
    assert all(np.array_equal(np.asarray(read[k]), v) for k, v in ours.items())


def test_big_vision_variant(config):
    """The variant is a check of the weights' shapes, and gives the image size a patch doesn't divide."""
    so400m = SiglipConfig.from_name("So400m/14-384")
    as_read = replace(so400m, vision=replace(so400m.vision, image_size=378))
    assert big_vision._with_variant(as_read, "So400m/14-384", "f").vision.image_size == 384
    assert big_vision._with_variant(as_read, "So400m/14", "f").vision.image_size == 378
    with pytest.raises(InputError, match="vision.width 768; the weights 1152"):
        big_vision._with_variant(as_read, "B/16", "f.npz")
    with pytest.raises(InputError, match="unknown SigLIP name"):
        big_vision._with_variant(as_read, "Z/99", "f.npz")
    with pytest.raises(InputError, match="vision.width"):
        big_vision._with_variant(config, "B/16", "f.npz")


def test_big_vision_ignores_optimizer_state(hf_sd, ours, tmp_path):
    """Members outside params/ (an optimizer's state) are never read, whatever they hold."""
    path = tmp_path / "train.npz"
    arrays = conversion_script_inverse(hf_sd, HEADS)
    np.savez(path, **arrays)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("opt/state/mu.npy", b"not even an array")
    _, read = big_vision.read_big_vision_state_dict(path)
    assert sorted(read) == sorted(ours)


# --- parity: the model built from each format ---------------------------------------------------------


def _reference(hf_model, images, tokens):
    with torch.no_grad():
        out = hf_model(input_ids=torch.from_numpy(tokens).long(),
                       pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
    return (out.vision_model_output.pooler_output.numpy(), out.text_model_output.pooler_output.numpy(),
            out.logits_per_image.numpy())


@pytest.mark.parametrize("source", ["folder", "npz"])
def test_built_model_matches_transformers(hf_model, hf_sd, hf_folder, tmp_path, source):
    """clip_jax.model.build from a transformers folder and from a big_vision .npz: image features (the
    MAP head's output), text features (the head's) and logits_per_image within ATOL of SiglipModel's."""
    if source == "folder":
        checkpoint = siglip_hf.read_siglip_folder(hf_folder, lazy=True)
    else:
        np.savez(tmp_path / "bv.npz", **conversion_script_inverse(hf_sd, HEADS))
        checkpoint = big_vision.read_big_vision(tmp_path / "bv.npz")
    assert checkpoint.kind == "clip" and checkpoint.projection
    model = clip_model.build(checkpoint.config, checkpoint.params)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 32, 32, 3), dtype=np.float32)
    tokens = rng.integers(0, 100, (3, 16)).astype(np.int32)
    with jax.default_matmul_precision("highest"):  # jitted calls: a third of the eager ones' time on a CPU
        image_features, text_features = model.encode_image(images), model.encode_text(tokens)
        family = family_of(model)
        per_image, _ = family.logits(image_features, text_features, **family.head(model))
    ref_image, ref_text, ref_logits = _reference(hf_model, images, tokens)
    np.testing.assert_allclose(np.asarray(image_features), ref_image, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(text_features), ref_text, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(per_image), ref_logits, atol=ATOL, rtol=0)


def test_lazy_reads_equal_eager(hf_folder, hf_sd, tmp_path):
    lazy, eager = siglip_hf.read_siglip_folder(hf_folder, lazy=True), siglip_hf.read_siglip_folder(hf_folder)
    assert any(isinstance(v, LazyArray) for v in lazy.params.values())
    assert not any(isinstance(v, LazyArray) for v in eager.params.values())
    assert all(np.array_equal(np.asarray(lazy.params[k]), eager.params[k]) for k in eager.params)
    np.savez(tmp_path / "bv.npz", **conversion_script_inverse(hf_sd, HEADS, scanned=True))
    lazy_bv = big_vision.read_big_vision(tmp_path / "bv.npz", lazy=True)
    assert all(np.array_equal(np.asarray(lazy_bv.params[k]), eager.params[k]) for k in eager.params)


# --- config files from outside: refusals and fuzz ------------------------------------------------------

SMALL = SiglipConfig(embed_dim=64, vision=SiglipVisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=4,
                                                             mlp_width=96),
                     text=SiglipTextConfig(vocab_size=100, context_length=16, width=64, layers=2, heads=4,
                                           mlp_width=96))
HF_SEED = json.dumps(siglip_hf.siglip_config_to_hf(SMALL)).encode()
OPEN_CLIP_SEED = json.dumps({"model_cfg": siglip_names.siglip_config_to_open_clip(SiglipConfig.from_name("B/16"),
                                                                                 exact=False),
                             "preprocess_cfg": siglip_names.siglip_preprocess_cfg(SMALL)}).encode()


@pytest.mark.parametrize("pp, field", [({"resample": "x"}, "resample"), ({"image_mean": [0.5]}, "image_mean"),
                                       ({"image_std": [1, 2, float("nan")]}, "image_std"), ([1], "object")])
def test_hf_preprocessor_refusals(pp, field):
    with pytest.raises(InputError, match=field):
        siglip_hf.siglip_config_from_hf(siglip_hf.siglip_config_to_hf(SMALL), "config.json", pp)


@FUZZ
@given(data=mutated(HF_SEED))
def test_hf_config_fuzz(data):
    """A mutated config.json: read, or refused with the project's error, in bounds."""
    bounded(lambda: siglip_hf.siglip_config_from_hf(parse_config_json(data), "config.json"))


@FUZZ
@given(data=mutated(OPEN_CLIP_SEED))
def test_open_clip_config_fuzz(data):
    def read():
        cfg = parse_config_json(data)
        if not isinstance(cfg, dict):
            raise InputError("not an object")
        return siglip_names.siglip_config_from_open_clip(cfg.get("model_cfg"), None, cfg.get("preprocess_cfg"))

    bounded(read)
