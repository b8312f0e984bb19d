"""Every parameter of every model declares its role and sharding (roles.py), and what is read from the
declarations (PyTorch names and layouts, sharding, weight decay, the fp16 release mix) holds for models
of every variant."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flax import nnx

from clip_jax.checkpoint.declared import declared_by_name
from clip_jax.config import PRESETS
from clip_jax.model import abstract_model, param_shapes
from clip_jax.roles import MODEL, ROLES, declarations, declared
from clip_jax.towers import TextTower, VisionTower

VIT = PRESETS["ViT-B/32"]
# open_clip's options that add or drop parameters: LayerScale, a text projection with a bias, no ln_pre.
VARIANT = dataclasses.replace(
    VIT, vision=dataclasses.replace(VIT.vision, ls_init_value=0.1, no_ln_pre=True),
    text=dataclasses.replace(VIT.text, ls_init_value=0.1, proj_bias=True),
)


def models():
    for name, config in PRESETS.items():
        yield name, config, None, ()
    yield "variant", VARIANT, None, ()
    yield "text tower", VIT, TextTower, (("projection", False),)
    yield "vision tower", VIT, VisionTower, (("projection", False),)


@pytest.mark.parametrize("name, config, model_type, options", list(models()), ids=[m[0] for m in models()])
def test_every_parameter_declares_a_role_and_a_sharding(name, config, model_type, options):
    state = abstract_model(config, model_type=model_type, options=options)[1]
    shapes = param_shapes(state)
    for path, var in nnx.to_flat_state(state):
        meta = var.get_metadata()
        where = ".".join(map(str, path))
        assert meta.get("role") in ROLES, where
        axes = meta.get("out_sharding")
        assert isinstance(axes, tuple) and len(axes) == len(shapes[where]), (where, axes)
        assert set(axes) <= {None, MODEL}, (where, axes)
        assert meta["eager_sharding"] is False, where  # placed by parallel.shard_params, not at creation
        # A name alone (a flat params dict) finds the same declaration.
        assert declared_by_name(where) == declared(var), where


def test_declarations_read_the_way_the_model_uses_each_parameter():
    d = declarations(abstract_model(PRESETS["RN50"])[1]) | declarations(abstract_model(VARIANT)[1])
    role = {k: v.role.name for k, v in d.items()}
    assert role["visual.transformer.resblocks.0.attn.in_proj.kernel"] == "kernel"
    assert d["visual.transformer.resblocks.0.attn.in_proj.kernel"].torch_name == "in_proj_weight"
    assert d["transformer.resblocks.3.attn.in_proj.bias"].torch_name == "in_proj_bias"
    assert role["visual.proj"] == "projection" and role["text_projection.kernel"] == "kernel"
    assert role["text_projection.bias"] == "bias" and role["visual.ln_post.bias"] == "norm_bias"
    assert role["visual.transformer.resblocks.0.ls_1.gamma"] == "gain"
    assert role["visual.layer1.0.bn1.mean"] == role["visual.layer1.0.bn1.var"] == "batch_stat"
    assert role["visual.layer1.0.bn1.scale"] == "norm_scale"
    assert role["token_embedding.embedding"] == "token_embedding"
    assert role["visual.class_embedding"] == role["positional_embedding"] == "embedding"
    assert role["logit_scale"] == "temperature"
    # Megatron pairs along "model"; the ResNet's convs split their outputs, but not the downsample's.
    assert d["transformer.resblocks.0.mlp.c_fc.kernel"].axes == (None, MODEL)
    assert d["transformer.resblocks.0.mlp.c_fc.bias"].axes == (MODEL,)
    assert d["transformer.resblocks.0.mlp.c_proj.kernel"].axes == (MODEL, None)
    assert d["transformer.resblocks.0.mlp.c_proj.bias"].axes == (None,)
    assert d["visual.attnpool.q_proj.kernel"].axes == (None, MODEL)
    # The fused q|k|v kernel and ViT's patch embedding stay whole (tests/test_aot.py says why).
    assert d["visual.transformer.resblocks.0.attn.in_proj.kernel"].axes == (None, None)
    assert d["visual.transformer.resblocks.0.attn.out_proj.kernel"].axes == (MODEL, None)
    assert d["visual.conv1.kernel"].axes == (None,) * 4
    assert d["visual.layer1.0.conv2.kernel"].axes == (None, None, None, MODEL)
    assert d["visual.layer1.0.downsample.0.kernel"].axes == (None,) * 4


def test_an_unknown_name_is_named():
    with pytest.raises(KeyError, match="visual.nonsense.kernel: not a clip_jax parameter name"):
        declared_by_name("visual.nonsense.kernel")


def test_an_undeclared_variable_is_refused():
    with pytest.raises(KeyError, match="no declared role"):
        declared(nnx.Param(np.zeros((2, 3))))
