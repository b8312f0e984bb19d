"""A config field is declared once (config_fields.declare): its rule, its open_clip and transformers names and
whether it adds parameters. These tests check every field's declaration is complete and that the readers,
the writer and the every-variant configs follow it, so a field added without one fails here."""

from __future__ import annotations

import dataclasses

import pytest

from clip_jax import config as C, config_fields as F
from clip_jax.checkpoint import hf_format
from clip_jax.checkpoint.declared import _EVERY_VARIANT
from clip_jax.errors import InputError

TOWERS = [(C.VisionConfig, "vision", C._VISION_FIELDS), (C.TextConfig, "text", C._TEXT_FIELDS)]
CLASSES = [C.CLIPConfig, C.VisionConfig, C.TextConfig]
WRONG = object()  # no rule accepts it


def _fields(cls):
    return [(cls, f) for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls, f", [pair for cls in CLASSES for pair in _fields(cls)],
                         ids=lambda x: getattr(x, "name", getattr(x, "__name__", "")))
def test_every_field_is_declared_with_a_rule(cls, f):
    """A field written as a plain dataclass field has no metadata: its rule lookup fails here."""
    assert set(f.metadata) >= {"rule", "open_clip", "hf", "coded", "vit_only", "adds_params"}
    check, expected = f.metadata["rule"]
    assert isinstance(expected, str) and not check(WRONG)
    if f.default is not dataclasses.MISSING:
        assert check(list(f.default) if isinstance(f.default, tuple) else f.default), f.name
    assert C._RULES[{C.CLIPConfig: "", C.VisionConfig: "vision.", C.TextConfig: "text."}[cls]][f.name] \
        is f.metadata["rule"]


@pytest.mark.parametrize("cls, tower, supported", TOWERS)
def test_every_open_clip_key_maps_to_one_field(cls, tower, supported):
    keys = F.source_keys(cls, "open_clip")
    assert len(set(keys.values())) == len(keys)  # no two fields read one key
    assert supported - set(keys.values()) == {"norm_kwargs"}  # CLIPConfig.layer_norm_eps, per tower
    assert F.source_keys(C.CLIPConfig, "open_clip") == {
        "embed_dim": "embed_dim", "vision": "vision_cfg", "text": "text_cfg", "activation": "quick_gelu"}


@pytest.mark.parametrize("cls, tower, supported", TOWERS)
def test_open_clip_reads_each_copied_field_under_its_name(cls, tower, supported):
    """Each field open_clip holds as clip_jax does is read from its key and checked by the field's rule."""
    copied = F.source_keys(cls, "open_clip", coded=False)
    assert copied  # width, ls_init_value, ...
    for name, key in copied.items():
        with pytest.raises(InputError, match=f"config field '{tower}_cfg.{key}'"):
            C.config_from_open_clip({f"{tower}_cfg": {key: WRONG}})
        value = F.adds_params(cls).get(name)
        if value is not None:  # a value of the field's own: it reaches the config
            config = C.config_from_open_clip({f"{tower}_cfg": {key: value}})
            assert getattr(getattr(config, tower), name) == value


@pytest.mark.parametrize("cls, tower, _", TOWERS)
def test_transformers_reads_and_writes_each_copied_field_under_its_name(cls, tower, _):
    copied = F.source_keys(cls, "hf", coded=False)
    assert {"width", "heads", "layers"} <= set(copied)
    for name, key in copied.items():
        with pytest.raises(InputError, match=f"config field '{tower}_config.{key}'"):
            hf_format.config_from_transformers({"model_type": "clip", f"{tower}_config": {key: WRONG}})
    config = C.CLIPConfig()
    written = hf_format.config_to_transformers(config, "clip", True)[f"{tower}_config"]
    assert {key: written[key] for key in copied.values()} == {
        key: getattr(getattr(config, tower), name) for name, key in copied.items()}
    read, _, _ = hf_format.config_from_transformers({"model_type": "clip", f"{tower}_config": written})
    assert {n: getattr(getattr(read, tower), n) for n in copied} == {n: getattr(getattr(config, tower), n)
                                                                      for n in copied}


@pytest.mark.parametrize("cls, tower, _", TOWERS)
def test_an_option_transformers_lacks_is_exported_at_its_default_only(cls, tower, _):
    """hf=None (and not converted in code): config_to_transformers refuses any other value, naming it."""
    absent = [f for f in dataclasses.fields(cls) if f.metadata["hf"] is None and "hf" not in f.metadata["coded"]]
    assert absent  # ls_init_value, ...
    for f in absent:
        other = F.adds_params(cls).get(f.name, not f.default if isinstance(f.default, bool) else None)
        if other is None or other == f.default:
            continue
        tower_config = dataclasses.replace(getattr(C.CLIPConfig(), tower), **{f.name: other})
        config = dataclasses.replace(C.CLIPConfig(), **{tower: tower_config})
        with pytest.raises(InputError, match=f"not supported: {tower}.{f.name}="):
            hf_format.config_to_transformers(config, "clip", True)


def test_every_variant_holds_every_value_that_adds_parameters():
    vit, resnet, siglip = _EVERY_VARIANT
    assert type(siglip).__name__ == "SiglipConfig"  # the second family's names
    for name, value in F.adds_params(C.VisionConfig).items():
        assert getattr(vit.vision, name) == value
    for name, value in F.adds_params(C.TextConfig).items():
        assert getattr(vit.text, name) == value and getattr(resnet.text, name) != value
    assert resnet.vision.is_resnet and F.adds_params(C.VisionConfig, resnet=True).keys().isdisjoint(
        f.name for f in dataclasses.fields(C.VisionConfig) if f.metadata["vit_only"])


def test_a_new_field_declared_once_is_validated_and_mapped():
    """A tower built here with one extra field, declared once: the derived helpers see all of it."""

    @dataclasses.dataclass(frozen=True)
    class Tower:
        width: int = F.declare(8, F.WIDTH, hf="hidden_size")
        qk_norm: bool = F.declare(False, F.BOOL, open_clip="qk_norm", vit_only=True, adds_params=True)

    assert F.source_keys(Tower, "open_clip") == {"width": "width", "qk_norm": "qk_norm"}
    assert F.source_keys(Tower, "hf") == {"width": "hidden_size"}
    assert F.adds_params(Tower) == {"qk_norm": True} and F.adds_params(Tower, resnet=True) == {}
    assert F.vit_only_defaults(Tower) == {"qk_norm": False}
    check, _ = dataclasses.fields(Tower)[1].metadata["rule"]
    assert check(True) and not check(1)
