"""Per-block parity with open_clip's own modules: a ViT's ResidualAttentionBlock, a causal text block (and
its one-token pooled path), the ResNet's AttentionPool2d, and a Bottleneck with and without its
downsample branch. Each pair of blocks holds the same random weights (LayerNorm and BatchNorm parameters
and statistics, and every bias, moved off their init so that each shows), in float32 with matmul
precision "highest". The whole-model tests (test_parity.py) say that a model is wrong; these say which
layer.

Tolerances, about 4x the largest difference measured over three seeds (float32 rounding in another
order): outputs of magnitude ~0.5-4.5 to ATOL = 3e-6 absolute (measured at most 7.2e-7, the causal block);
the gradients of a Bottleneck's BatchNorm parameters to GRAD_RTOL = 2e-6 of their largest entry (sums over
a whole feature map, up to ~30; measured at most 4.8e-7). A slip in a layer moves its output by far more:
LayerNorm's eps 1e-6 instead of 1e-5 moves the ViT block's output by 8e-4 (test_vit_block checks it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from open_clip.modified_resnet import AttentionPool2d as TorchAttentionPool2d, Bottleneck as TorchBottleneck
from open_clip.transformer import LayerNorm, QuickGELU, ResidualAttentionBlock as TorchBlock

from clip_jax import config
from clip_jax.layers import ACTIVATION_FUNCTIONS, MLP, ResidualAttentionBlock
from clip_jax.pooling import AttentionPool2d
from clip_jax.resnet import Bottleneck
from clip_jax.siglip_config import SIGLIP_ACTIVATIONS

ATOL = 3e-6
GRAD_RTOL = 2e-6
FLOAT32 = dict(dtype=jnp.float32, precision="highest")
EPS = 1e-5  # torch's LayerNorm and BatchNorm2d default, and OpenAI's


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`module` in eval mode with norm gains, biases and BatchNorm statistics moved off their init (gains 1,
    biases and means 0, variances 1; torch's attention biases start at 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=gen))
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return module.eval()


def copy_weights(target: nnx.Module, source: torch.nn.Module) -> None:
    """Set `target`'s params to `source`'s, by torch name: Linear weights transposed to [in, out], conv
    weights OIHW to HWIO, LayerNorm/BatchNorm weight to scale, BatchNorm's running statistics to mean/var.
    Written here, apart from clip_jax's checkpoint conversion, so that a conversion slip can't hide one."""
    for name, value in source.state_dict().items():
        *path, leaf = name.split(".")
        if leaf == "num_batches_tracked":
            continue
        if leaf.startswith("in_proj_"):  # nn.MultiheadAttention keeps q, k, v stacked as attn.in_proj_*
            path, leaf = [*path, "in_proj"], leaf.removeprefix("in_proj_")
        module = target
        for part in path:
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        value = value.detach().numpy()
        if isinstance(module, nnx.Linear) and leaf == "weight":
            leaf, value = "kernel", value.T
        elif isinstance(module, nnx.Conv):
            leaf, value = "kernel", value.transpose(2, 3, 1, 0)
        elif isinstance(module, (nnx.LayerNorm, nnx.BatchNorm)):
            leaf = {"weight": "scale", "running_mean": "mean", "running_var": "var"}.get(leaf, leaf)
        variable = getattr(module, leaf)
        assert variable.shape == value.shape, (name, variable.shape, value.shape)
        variable.set_value(jnp.asarray(value))
    unset = [p for p, v in nnx.to_flat_state(nnx.state(target)) if not isinstance(v[...], jax.Array)]
    assert not unset, f"not in the torch module: {unset}"


def built(cls, *args, **kwargs) -> nnx.Module:
    """cls(*args, **kwargs) with shapes only (no random init to compile): copy_weights sets every value."""
    return nnx.eval_shape(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0)))


def run(module: nnx.Module, *args, method: str = "__call__", **static):
    """getattr(module, method)(*args, **static), jit-compiled (one program instead of op-by-op dispatch)."""
    graphdef, state = nnx.split(module)
    fn = lambda state, *args: getattr(nnx.merge(graphdef, state), method)(*args, **static)
    with jax.default_matmul_precision("highest"):
        return jax.jit(fn)(state, *map(jnp.asarray, args))


def assert_close(got, want, atol: float = ATOL):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)


def block_pair(width: int = 64, heads: int = 4, seed: int = 0, activation: str = "quick_gelu",
               ls_init_value: float | None = None):
    torch.manual_seed(seed)
    act_layer = {"quick_gelu": QuickGELU, "gelu": torch.nn.GELU}[activation]
    ref = perturbed(TorchBlock(width, heads, mlp_ratio=4.0, ls_init_value=ls_init_value, act_layer=act_layer,
                               norm_layer=LayerNorm), seed)
    ours = built(ResidualAttentionBlock, width, heads, 4 * width, eps=EPS, activation=activation,
                 ls_init_value=ls_init_value, attention=None, **FLOAT32)
    copy_weights(ours, ref)
    return ref, ours


def tokens(n: int, length: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(n, length, width).astype(np.float32)


def test_vit_block():
    """One block of a ViT tower: bidirectional attention over [N, L, D] (batch first, as open_clip runs
    it). Inputs of std 0.1, where LayerNorm's eps shows: Flax's default 1e-6 instead of 1e-5 in both
    LayerNorms moves the output by 8e-4, far outside the tolerance."""
    ref, ours = block_pair()
    x = 0.1 * tokens(2, 10, 64)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    assert_close(run(ours, x), want)
    ours.ln_1.epsilon = ours.ln_2.epsilon = 1e-6
    assert np.abs(np.asarray(run(ours, x)) - want).max() > 100 * ATOL


def test_layer_scale_gelu_block():
    """A block with LayerScale (open_clip's ls_1, ls_2, gains set off their init) and exact GELU; without
    LayerScale the block has no ls_* params, and with its gains at 1 it is the plain block."""
    ref, ours = block_pair(seed=5, activation="gelu", ls_init_value=0.5)
    with torch.no_grad():
        ref.ls_1.gamma.mul_(torch.linspace(0.5, 2.0, 64))
        ref.ls_2.gamma.mul_(torch.linspace(2.0, 0.5, 64))
    copy_weights(ours, ref)
    x = tokens(2, 10, 64, seed=5)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    assert_close(run(ours, x), want)
    # LayerScale changes the output: gains of 1 (an identity LayerScale) move it by far more than ATOL
    ours.ls_1.gamma.set_value(jnp.ones(64))
    ours.ls_2.gamma.set_value(jnp.ones(64))
    assert np.abs(np.asarray(run(ours, x)) - want).max() > 100 * ATOL
    plain = built(ResidualAttentionBlock, 64, 4, 256, eps=EPS, activation="gelu", attention=None, **FLOAT32)
    assert not any("ls_" in str(path) for path, _ in nnx.to_flat_state(nnx.state(plain)))


def test_activations_are_the_configs():
    """Every activation a config accepts (CLIP's, SigLIP's) has its function, and no other; another name is
    refused."""
    assert set(ACTIVATION_FUNCTIONS) == set(config.ACTIVATIONS) | set(SIGLIP_ACTIVATIONS)
    with pytest.raises(ValueError, match="activation must be one of"):
        MLP(8, 32, "relu", rngs=nnx.Rngs(0), **FLOAT32)


def test_causal_text_block_and_its_pooled_token():
    """A text block: causal attention (open_clip passes the -inf upper triangle as attn_mask); and the
    last block's pooled path (one query per row, its key length the pooled position + 1) equals the
    reference at those positions."""
    ref, ours = block_pair(seed=1)
    x = tokens(3, 12, 64, seed=1)
    mask = torch.full((12, 12), float("-inf")).triu_(1)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), attn_mask=mask).numpy()
        bidirectional = ref(torch.from_numpy(x)).numpy()
    index = np.array([3, 11, 0], np.int32)
    assert_close(run(ours, x, causal=True), want)
    assert_close(run(ours, x, index, method="pooled", causal=True), want[np.arange(3), index])
    assert np.abs(want - bidirectional).max() > 0.1  # the mask matters for these inputs


def test_attention_pool():
    """ModifiedResNet's AttentionPool2d: the mean token, the positional embedding, and only the mean token
    querying the [N, H, W, C] map (torch: NCHW)."""
    torch.manual_seed(2)
    ref = perturbed(TorchAttentionPool2d(spacial_dim=4, embed_dim=64, num_heads=4, output_dim=32), 2)
    ours = built(AttentionPool2d, 4, 64, 4, 32, attention=None, **FLOAT32)
    copy_weights(ours, ref)
    x = np.random.RandomState(2).randn(2, 4, 4, 64).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert_close(run(ours, x), want)


def bottleneck_pair(inplanes: int, planes: int, stride: int, seed: int):
    torch.manual_seed(seed)
    ref = perturbed(TorchBottleneck(inplanes, planes, stride), seed)
    ours = built(Bottleneck, inplanes, planes, stride, EPS, **FLOAT32)
    copy_weights(ours, ref)
    return ref, ours


def folds(ours: Bottleneck, x_shape: tuple[int, ...]) -> set[bool]:
    """Which of conv_bn's two forms (BatchNorm's scale folded into the kernel, or applied to the output)
    the block's convolutions take for an input of this shape: conv_bn's own rule."""
    n, h, w, _ = x_shape
    pooled = (h // ours.stride, w // ours.stride)
    sizes = [(ours.conv1, (h, w)), (ours.conv2, (h, w)), (ours.conv3, pooled)]
    if ours.downsample is not None:
        sizes.append((ours.downsample[0], pooled))
    return {n * hh * ww >= np.prod(conv.kernel.shape[:3]) for conv, (hh, ww) in sizes}


@pytest.mark.parametrize("inplanes,planes,stride", [(64, 16, 1), (32, 16, 2)], ids=["identity", "downsample"])
def test_bottleneck(inplanes, planes, stride):
    """A Bottleneck (conv-BN-relu x3, the avgpool before conv3 when strided) and its shortcut: the identity,
    or avgpool, 1x1 conv and BatchNorm. BatchNorm on its running statistics, as torch's eval mode; the
    block's convolutions take both of conv_bn's forms here. With the downsample: the gradients of a loss
    with respect to every BatchNorm's scale and bias equal torch's too, so fine-tuning trains them."""
    ref, ours = bottleneck_pair(inplanes, planes, stride, seed=3 + stride)
    x = np.random.RandomState(3).randn(2, 8, 8, inplanes).astype(np.float32)
    assert folds(ours, x.shape) == {True, False}
    assert (ours.downsample is not None) == (stride > 1)
    x_torch = torch.from_numpy(x).permute(0, 3, 1, 2)
    want = ref(x_torch)
    assert_close(run(ours, x), want.detach().permute(0, 2, 3, 1).numpy())
    if stride == 1:
        return

    # Gradients of sum(output * weights) with respect to BatchNorm's affine parameters.
    weights = np.random.RandomState(4).randn(*want.shape).astype(np.float32)
    (want * torch.from_numpy(weights)).sum().backward()
    norms = {"bn1": ref.bn1, "bn2": ref.bn2, "bn3": ref.bn3, "downsample.1": getattr(ref.downsample, "1")}
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)
    nchw = jnp.asarray(weights)

    def loss(params):
        out = nnx.merge(graphdef, params, rest)(jnp.asarray(x))
        return jnp.sum(out.transpose(0, 3, 1, 2) * nchw)

    with jax.default_matmul_precision("highest"):
        grads = jax.jit(jax.grad(loss))(params)
    for name, bn in norms.items():
        node = grads
        for part in name.split("."):
            node = node[int(part)] if part.isdigit() else node[part]
        for leaf, torch_leaf in (("scale", bn.weight), ("bias", bn.bias)):
            g, want = np.asarray(node[leaf][...]), torch_leaf.grad.numpy()
            assert np.abs(want).max() > 0.5, (name, leaf)
            assert_close(g, want, atol=GRAD_RTOL * np.abs(want).max())

