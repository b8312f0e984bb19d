"""The 8-device half of tests/test_losses.py: run as a script in a subprocess whose XLA_FLAGS ask for 8 host
CPU devices (JAX reads them once, at import; the rest of the suite keeps its single device).

    python tests/loss_checks.py OUT.json

The ring (clip_jax.losses.sigmoid_loss_sharded) against the one-device sigmoid_loss on the same global batch
over 4 and 8 devices (and a data x model mesh), what its compiled program communicates and holds, and one
Trainer step of a tiny Siglip with loss="sigmoid" on 4 devices against the same step on one. Writes what the
tests assert on (max differences, counts, bytes) as JSON.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.parallel_checks import max_diff  # noqa: E402


class DeviceRun:
    """A check script (`python SCRIPT OUT.json`) run in a subprocess with `devices` host CPU devices, started
    at once so that it runs beside the tests of the calling process; `result()` waits for its JSON."""

    def __init__(self, script: Path, out: Path, devices: int):
        import os
        import subprocess

        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
        self.out = out
        self.proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def result(self, timeout: float) -> dict:
        _, stderr = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, stderr[-4000:]
        return json.loads(self.out.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def module_run(script: str, devices: int, timeout: float) -> tuple:
    """The two module fixtures of a test module whose checks run in a `devices`-device subprocess: `device_run`
    (autouse: the script starts before the module's first test, and runs beside them) and `checks` (its JSON,
    waited for at most `timeout` s). Assign both to module names: `device_run, checks = module_run(...)`."""
    import pytest

    @pytest.fixture(scope="module", autouse=True, name="device_run")
    def run(tmp_path_factory):
        started = DeviceRun(ROOT / "tests" / script, tmp_path_factory.mktemp(Path(script).stem) / "checks.json",
                            devices)
        yield started
        started.stop()

    @pytest.fixture(scope="module", name="checks")
    def result(device_run) -> dict:
        return device_run.result(timeout=timeout)

    return run, result


SCALE, BIAS = 10.0, -3.0  # off big_vision's init (10, -10): -10 makes the negatives' gradients ~1e-5


def features(n: int, d: int, seed: int = 0):
    """Normalized [n, d] image and text features, each text near its image (so positives score high)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n, d))
    txt = img + rng.standard_normal((n, d))
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return unit(img), unit(txt)


def tiny_siglip():
    """The brief's tiny Siglip: widths 32, 1 block a tower, 16x16 images of 8x8 patches, 8 tokens of 50; random
    params off their init (tests/siglip_parallel_checks.py: t = 2, b = -3.7, so every pair's gradient counts),
    placed by clip_jax.build (a random init through flax's initializers takes ~10 s here)."""
    import clip_jax
    from clip_jax.siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
    from tests.siglip_parallel_checks import siglip_params

    config = SiglipConfig(
        embed_dim=32,
        vision=SiglipVisionConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2, mlp_width=64),
        text=SiglipTextConfig(vocab_size=50, context_length=8, width=32, layers=1, heads=2, mlp_width=64),
    )
    return clip_jax.build(config, siglip_params(config))


def siglip_batch(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), rng.integers(0, 50, (n, 8), dtype=np.int32)


def collectives(hlo: str) -> dict[str, int]:
    """How many of each collective the compiled program has (its instructions, not their mentions)."""
    ops = ("all-gather", "collective-permute", "all-reduce", "reduce-scatter", "all-to-all")
    return {op: len(re.findall(rf"= [^=\n]*\b{op}(-start)?\(", hlo)) for op in ops}


def ring_checks(r: dict) -> None:
    import jax
    import numpy as np

    from clip_jax.losses import sigmoid_loss, sigmoid_loss_sharded, top1_sharded
    from clip_jax.parallel import make_mesh

    n, d = 64, 16
    img, txt = features(n, d)
    grad = jax.jit(jax.value_and_grad(sigmoid_loss, argnums=(0, 1, 2, 3)))
    want, want_grads = grad(img, txt, SCALE, BIAS)
    r["unsharded"] = float(want)
    r["top1_unsharded"] = float(np.mean(np.argmax(img @ txt.T, axis=1) == np.arange(n)))
    meshes = {"4": make_mesh(devices=jax.devices()[:4]), "8": make_mesh(), "4x2": make_mesh(2)}
    for name, mesh in meshes.items():
        sharded = jax.jit(jax.value_and_grad(lambda *a, m=mesh: sigmoid_loss_sharded(*a, m), argnums=(0, 1, 2, 3)))
        compiled = sharded.lower(img, txt, SCALE, BIAS).compile()  # once: run and read
        got, got_grads = compiled(img, txt, SCALE, BIAS)
        r[f"ring{name}"] = {
            "mesh": dict(mesh.shape),
            "loss": abs(float(got) - float(want)),
            "grads": [max_diff(a, b) for a, b in zip(got_grads, want_grads)],
            "grad_scale": [float(np.abs(np.asarray(g)).max()) for g in want_grads],
            "collectives": collectives(compiled.as_text()),
            "top1": float(jax.jit(lambda i, t, m=mesh: top1_sharded(i, t, m))(img, txt)),
        }
    softmax_checks(r, img, txt, meshes)
    try:
        sigmoid_loss_sharded(img[:6], txt[:6], SCALE, BIAS, meshes["4"])
    except Exception as e:  # noqa: BLE001 - the test asserts on the type and message
        r["ragged_error"] = [type(e).__name__, str(e)]


def softmax_checks(r: dict, img, txt, meshes: dict) -> None:
    """contrastive_loss_sharded (each device's rows, features gathered) against contrastive_loss of the
    one-device logits, at OpenAI's init scale of ~14.3 (1 / 0.07)."""
    import jax

    from clip_jax.losses import contrastive_loss_sharded
    from clip_jax.train import contrastive_loss

    scale = 1 / 0.07
    grad = lambda f: jax.value_and_grad(f, argnums=(0, 1, 2))
    want, want_grads = jax.jit(grad(lambda i, t, s: contrastive_loss(s * i @ t.T)))(img, txt, scale)
    r["softmax_unsharded"] = float(want)
    for name, mesh in meshes.items():
        compiled = jax.jit(grad(lambda *a, m=mesh: contrastive_loss_sharded(*a, m))).lower(img, txt, scale).compile()
        got, got_grads = compiled(img, txt, scale)
        r[f"softmax{name}"] = {
            "loss": abs(float(got) - float(want)),
            "grads": [max_diff(a, b) for a, b in zip(got_grads, want_grads)],
            "collectives": collectives(compiled.as_text()),
        }


def memory_checks(r: dict) -> None:
    """Bytes of scratch the compiled value-and-gradient programs hold per device, at N = 2048 on 8 devices:
    the one-device loss needs the N x N logits (16 MiB in float32); the ring one [256, 256] block at a time."""
    import jax

    from clip_jax.losses import sigmoid_loss, sigmoid_loss_sharded
    from clip_jax.parallel import make_mesh

    n, d, mesh = 2048, 64, make_mesh()
    spec = jax.ShapeDtypeStruct((n, d), "float32")
    scalar = jax.ShapeDtypeStruct((), "float32")
    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
    one = grad(sigmoid_loss).lower(spec, spec, scalar, scalar).compile().memory_analysis()
    ring = grad(lambda *a: sigmoid_loss_sharded(*a, mesh)).lower(spec, spec, scalar, scalar).compile().memory_analysis()
    r["memory"] = {"n": n, "d": d, "devices": 8, "temp_unsharded": int(one.temp_size_in_bytes),
                   "temp_ring": int(ring.temp_size_in_bytes), **softmax_memory(n, d, mesh)}


def softmax_memory(n: int, d: int, mesh) -> dict:
    """Scratch bytes per device of CLIP's loss, value and gradient, on features split over "data": XLA's own
    split of contrastive_loss(scale * img @ txt.T) against contrastive_loss_sharded's one block of rows."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from clip_jax.losses import contrastive_loss, contrastive_loss_sharded

    spec = jax.ShapeDtypeStruct((n, d), "float32", sharding=NamedSharding(mesh, PartitionSpec("data")))
    scalar = jax.ShapeDtypeStruct((), "float32")
    temp = lambda f: int(jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2))).lower(spec, spec, scalar).compile()
                         .memory_analysis().temp_size_in_bytes)
    return {"temp_softmax_xla": temp(lambda i, t, s: contrastive_loss(s * jnp.dot(i, t.T, precision="highest"))),
            "temp_softmax_rows": temp(lambda i, t, s: contrastive_loss_sharded(i, t, s, mesh))}


def trainer_checks(r: dict) -> None:
    """One step of plain SGD (lr 1: the update is minus the gradient, with no Adam normalization to magnify
    rounding) with loss="sigmoid" on a 4-device mesh and on one device, from the same params and batch; and
    what open_clip's SigLipLoss needs to check the one-device step (the model's normalized features, t, b)."""
    import jax
    import numpy as np
    import optax

    from clip_jax.model import l2_normalize
    from clip_jax.parallel import make_mesh
    from clip_jax.train import Trainer

    model = tiny_siglip()
    images, tokens = (jax.numpy.asarray(x) for x in siglip_batch(16))
    single = Trainer(model, optax.sgd(1.0), loss="sigmoid")
    sharded = Trainer(model, optax.sgd(1.0), loss="sigmoid", mesh=make_mesh(devices=jax.devices()[:4]))
    start = single.init()
    a, ma = single.step(start, images, tokens)
    compiled = sharded.lower(images, tokens).compile()  # once: run and read
    b, mb = compiled(sharded.init(), images, tokens)
    old, new_a, new_b = (jax.tree.leaves(s.params) for s in (start, a, b))
    scalar = lambda state, name: float(state.params[name][...])
    r["trainer"] = {
        "loss_single": float(ma["loss"]), "loss_sharded": float(mb["loss"]),
        "accuracy": [float(ma["accuracy"]), float(mb["accuracy"])],
        "logit_bias": [float(ma["logit_bias"]), float(mb["logit_bias"]), scalar(a, "logit_bias")],
        "max_param_diff": max(max_diff(x, y) for x, y in zip(new_a, new_b)),
        "max_update": max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(new_a, old)),
        "devices": len(jax.tree.leaves(b.params)[0].sharding.device_set),
        "collectives": collectives(compiled.as_text()),
        # for open_clip: the features and scalars before the step, and the step's moves of t and b
        "image_features": np.asarray(l2_normalize(model.image_features(images))).tolist(),
        "text_features": np.asarray(l2_normalize(model.text_features(tokens))).tolist(),
        "t": scalar(start, "logit_scale"), "b": scalar(start, "logit_bias"),
        "t_step": scalar(start, "logit_scale") - scalar(a, "logit_scale"),
        "b_step": scalar(start, "logit_bias") - scalar(a, "logit_bias"),
    }


def main(out_path: str) -> None:
    import time

    import jax

    r: dict = {"device_count": jax.device_count(), "seconds": {}}
    for check in (ring_checks, memory_checks, trainer_checks):
        start = time.perf_counter()
        check(r)
        r["seconds"][check.__name__] = round(time.perf_counter() - start, 1)
    Path(out_path).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
