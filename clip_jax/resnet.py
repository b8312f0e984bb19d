"""OpenAI's ModifiedResNet image tower, as open_clip's `modified_resnet.py`: bias-free convs with
BatchNorm on running statistics (folded where it is cheaper), Bottleneck blocks, an attention pool."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .config import CLIPConfig, VisionConfig
from .layers import check_remat_policy, conv2d, lazy_init, rematerialized
from .pooling import AttentionPool2d
from .roles import BATCH_STAT, KERNEL, MODEL, NORM_BIAS, NORM_SCALE, declare


def _conv(din: int, dout: int, k: int, *, stride: int = 1, dtype, precision, rngs,
          out_axis: str | None = MODEL) -> nnx.Conv:
    """A bias-free conv; on a mesh its output channels are split along `out_axis`."""
    # Explicit padding as torch's padding=1 ('SAME' pads differently for stride 2).
    pad = (k - 1) // 2
    return nnx.Conv(
        din, dout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
        precision=precision, kernel_init=lazy_init(nnx.initializers.lecun_normal()), rngs=rngs,
        kernel_metadata=declare(KERNEL, None, None, None, out_axis),
    )


def _batch_norm(width: int, eps: float, dtype, rngs) -> nnx.BatchNorm:
    # Inference: running statistics, torch's eps; momentum 0.9 is torch's 0.1 in Flax's convention.
    bn = nnx.BatchNorm(width, use_running_average=True, epsilon=eps, momentum=0.9, dtype=dtype, rngs=rngs,
                       scale_init=lazy_init(nnx.initializers.ones), bias_init=lazy_init(nnx.initializers.zeros),
                       scale_metadata=declare(NORM_SCALE, None), bias_metadata=declare(NORM_BIAS, None))
    # Flax makes the statistics without a metadata argument: declared here instead.
    bn.mean = nnx.BatchStat(bn.mean.get_raw_value(), **declare(BATCH_STAT, None))
    bn.var = nnx.BatchStat(bn.var.get_raw_value(), **declare(BATCH_STAT, None))
    return bn


def conv_bn(conv: nnx.Conv, bn: nnx.BatchNorm, x: jax.Array) -> jax.Array:
    """bn(conv(x)) with BatchNorm on running statistics: x [N, H, W, C] -> [N, H', W', C'].

    Inference BatchNorm is a per-channel affine map y * s + t. The scale s either folds into the kernel
    (a pass over kh*kw*C*C' weights, and the conv + bias (+ residual) + relu pattern that cuDNN fuses) or
    multiplies the output (a pass over N*H'*W'*C' activations); each layer takes the smaller of the two,
    which is a static choice from the shapes. s and t are computed in float32 before the cast.
    """
    kh, kw, cin, _ = conv.kernel.shape
    n, h, w, _ = x.shape
    fold = n * (h // conv.strides) * (w // conv.strides) >= kh * kw * cin
    s = bn.scale[...] / jnp.sqrt(bn.var[...] + bn.epsilon)
    y = conv2d(conv, x, conv.kernel[...] * s if fold else None)
    if not fold:
        y = y * s.astype(y.dtype)
    return y + (bn.bias[...] - bn.mean[...] * s).astype(y.dtype)


def _avg_pool(x: jax.Array, k: int) -> jax.Array:
    # torch.nn.AvgPool2d(k): kernel = stride = k, no padding.
    return x if k == 1 else nnx.avg_pool(x, (k, k), strides=(k, k))


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, eps: float, *, dtype, precision, rngs):
        kw = dict(dtype=dtype, precision=precision, rngs=rngs)
        self.stride = stride
        self.conv1 = _conv(inplanes, planes, 1, **kw)
        self.bn1 = _batch_norm(planes, eps, dtype, rngs)
        self.conv2 = _conv(planes, planes, 3, **kw)
        self.bn2 = _batch_norm(planes, eps, dtype, rngs)
        self.conv3 = _conv(planes, planes * self.expansion, 1, **kw)
        self.bn3 = _batch_norm(planes * self.expansion, eps, dtype, rngs)
        self.downsample = nnx.data(None)
        if stride > 1 or inplanes != planes * self.expansion:
            # torch: Sequential("-1": AvgPool2d(stride), "0": conv 1x1, "1": BatchNorm); the pool has no params.
            # Its conv is not split on a mesh, unlike the block's own.
            self.downsample = nnx.data(nnx.List(
                [_conv(inplanes, planes * self.expansion, 1, out_axis=None, **kw),
                 _batch_norm(planes * self.expansion, eps, dtype, rngs)]
            ))

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(conv_bn(self.conv1, self.bn1, x))
        out = jax.nn.relu(conv_bn(self.conv2, self.bn2, out))
        # All convolutions have stride 1; an avgpool does the downsampling (OpenAI's anti-aliasing choice).
        out = conv_bn(self.conv3, self.bn3, _avg_pool(out, self.stride))
        identity = x
        if self.downsample is not None:
            conv, bn = self.downsample
            identity = conv_bn(conv, bn, _avg_pool(x, self.stride))
        return jax.nn.relu(out + identity)


class ResNetStage(nnx.List):
    """One stage of Bottlenecks (torch's nn.Sequential `layer1`...`layer4`): the first with `stride` and
    the change of width, then `blocks - 1` more. remat: as Transformer's, per Bottleneck."""

    def __init__(self, inplanes: int, planes: int, blocks: int, stride: int, *, eps: float, remat: bool = False,
                 remat_policy: str = "nothing_saveable", dtype, precision, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, precision=precision, rngs=rngs)
        outplanes = planes * Bottleneck.expansion
        super().__init__([Bottleneck(inplanes, planes, stride, eps, **kw)]
                         + [Bottleneck(outplanes, planes, 1, eps, **kw) for _ in range(1, blocks)])
        self.remat = remat
        self.remat_policy = check_remat_policy(remat_policy)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, inplanes] -> [N, H / stride, W / stride, 4 * planes]."""
        call = rematerialized(lambda block, x: block(x), self.remat, self.remat_policy)
        for block in self:
            x = call(block, x)
        return x


class ModifiedResNet(nnx.Module):
    """OpenAI's ResNet: a 3-conv stem with avgpool, anti-aliased strided blocks, an attention pool."""

    def __init__(self, cfg: CLIPConfig, *, dtype, precision, attention, rngs: nnx.Rngs):
        v: VisionConfig = cfg.vision
        eps = cfg.layer_norm_eps  # torch BatchNorm2d's default eps is the same 1e-5
        kw = dict(dtype=dtype, precision=precision, rngs=rngs)
        width = v.width
        self.dtype = dtype
        # The first conv, on the pixels, is whole on every device, as ViT's patch embedding (same name).
        self.conv1 = _conv(3, width // 2, 3, stride=2, out_axis=None, **kw)
        self.bn1 = _batch_norm(width // 2, eps, dtype, rngs)
        self.conv2 = _conv(width // 2, width // 2, 3, **kw)
        self.bn2 = _batch_norm(width // 2, eps, dtype, rngs)
        self.conv3 = _conv(width // 2, width, 3, **kw)
        self.bn3 = _batch_norm(width, eps, dtype, rngs)
        # Stage i: planes width * 2**i, stride 2 but for the first; each takes the last one's 4 * planes.
        inplanes = [width] + [width * 2**i * Bottleneck.expansion for i in range(3)]
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            ResNetStage(inplanes[i], width * 2**i, blocks, 1 if i == 0 else 2, eps=eps, **kw)
            for i, blocks in enumerate(v.layers)
        )
        self.attnpool = AttentionPool2d(
            v.grid_size, width * 32, v.heads, cfg.embed_dim, attention=attention, **kw
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, 3] normalized -> [N, embed_dim] float32."""
        x = x.astype(self.dtype)
        x = jax.nn.relu(conv_bn(self.conv1, self.bn1, x))
        x = jax.nn.relu(conv_bn(self.conv2, self.bn2, x))
        x = jax.nn.relu(conv_bn(self.conv3, self.bn3, x))
        x = _avg_pool(x, 2)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return self.attnpool(x).astype(jnp.float32)
