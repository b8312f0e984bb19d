"""The 4-device half of tests/test_gradient_cache.py: run as a script in a subprocess whose XLA_FLAGS ask for 4
host CPU devices (JAX reads them once, at import).

    python tests/gradient_cache_checks.py OUT.json

Trainer(accumulate=4) against accumulate=1 on a mesh of 4 devices, from the same params and batch of 32 (2 rows
a device a chunk): a tiny CLIP with the softmax loss, a tiny Siglip with the sigmoid ring, and the CLIP with
fsdp=True and a locked image tower. One step of plain SGD at lr 1 (the update is minus the gradient), so the
params' difference is the gradients'. Writes the max differences and what the compiled steps communicate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.loss_checks import collectives, siglip_batch, tiny_siglip  # noqa: E402
from tests.parallel_checks import max_diff  # noqa: E402


def compare(model, batch, mesh, **kw) -> dict:
    """One SGD step with accumulate 1 and 4 on `mesh`. -> max differences of loss, metrics and params."""
    import jax
    import numpy as np
    import optax

    from clip_jax.train import Trainer

    out = {}
    for k in (1, 4):
        trainer = Trainer(model, optax.sgd(1.0), mesh=mesh, accumulate=k, **kw)
        images, tokens = trainer.global_batch(*batch)
        compiled = trainer.lower(images, tokens).compile()
        start = trainer.init()
        state, metrics = compiled(start, images, tokens)
        out[k] = dict(params=jax.tree.leaves(state.params), metrics={m: float(v) for m, v in metrics.items()},
                      start=jax.tree.leaves(start.params), ops=collectives(compiled.as_text()))
    grads = [np.asarray(a) - np.asarray(b) for a, b in zip(out[1]["start"], out[1]["params"])]
    return {
        "metrics": [out[1]["metrics"], out[4]["metrics"]],
        "max_param_diff": max(max_diff(a, b) for a, b in zip(out[1]["params"], out[4]["params"])),
        "max_grad": max(float(np.abs(g).max()) for g in grads),
        "collectives": [out[1]["ops"], out[4]["ops"]],
    }


def main(out_path: str) -> None:
    import time

    import jax

    from clip_jax.parallel import make_mesh
    from tests.tiny import TRAIN, tiny_model, train_batch

    assert jax.device_count() == 4
    r: dict = {"seconds": {}}
    cases = {
        "softmax": lambda: compare(tiny_model(TRAIN), train_batch(32), make_mesh()),
        "sigmoid": lambda: compare(tiny_siglip(), siglip_batch(32), make_mesh(), loss="sigmoid"),
        "fsdp_lit": lambda: compare(tiny_model(TRAIN), train_batch(32), make_mesh(), fsdp=True, lock_image=True),
    }
    for name, case in cases.items():
        start = time.perf_counter()
        r[name] = case()
        r["seconds"][name] = round(time.perf_counter() - start, 1)
    Path(out_path).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
