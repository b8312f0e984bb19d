"""The 8-device half of tests/test_fsdp.py: run as a script in a subprocess whose XLA_FLAGS ask for 8 host CPU
devices (JAX reads them once, at import).

    python tests/fsdp_checks.py OUT.json [CASE ...]      # cases: softmax8 sigmoid8 softmax4x2 (default: sigmoid8)

Trainer(fsdp=True) against Trainer(fsdp=False) on the same mesh, batch and AdamW (a tiny CLIP with the softmax
loss and a tiny Siglip with the sigmoid loss over 8 devices; the CLIP over a 4 x 2 data x model mesh), where the
state lives (the shards' shapes), what the compiled steps communicate and how many bytes of state each device
holds. Writes what the tests assert on as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.loss_checks import collectives, siglip_batch, tiny_siglip  # noqa: E402
from tests.parallel_checks import max_diff  # noqa: E402

STEPS = 3


def compare(model, batches, mesh, loss: str) -> dict:
    """STEPS AdamW steps with fsdp off and on, from the same params, on `mesh`. -> the JSON of one case."""
    import jax

    from clip_jax.train import Trainer, optimizer

    runs = {}
    for fsdp in (False, True):
        trainer = Trainer(model, optimizer(1e-3, 10, 1, weight_decay=0.1), mesh=mesh, loss=loss, fsdp=fsdp)
        images, tokens = trainer.global_batch(*batches[0])
        compiled = trainer.lower(images, tokens).compile()  # once: run and read
        state, losses = trainer.init(), []
        for images, tokens in batches:
            state, metrics = compiled(state, *trainer.global_batch(images, tokens))
            losses.append(float(metrics["loss"]))
        memory = compiled.memory_analysis()
        runs[fsdp] = dict(state=state, losses=losses, ops=collectives(compiled.as_text()),
                          argument_bytes=int(memory.argument_size_in_bytes), trainer=trainer)
    off, on = runs[False], runs[True]
    first = jax.tree.leaves(off["trainer"].init().params)
    return {
        "mesh": dict(mesh.shape),
        "losses": [off["losses"], on["losses"]],
        "max_param_diff": max(max_diff(a, b) for a, b in zip(jax.tree.leaves(off["state"].params),
                                                                 jax.tree.leaves(on["state"].params))),
        "max_opt_diff": max(max_diff(a, b) for a, b in zip(jax.tree.leaves(off["state"].opt_state),
                                                              jax.tree.leaves(on["state"].opt_state))),
        "max_update": max(max_diff(a, b) for a, b in zip(first, jax.tree.leaves(on["state"].params))),
        "collectives": [off["ops"], on["ops"]],
        "argument_bytes": [off["argument_bytes"], on["argument_bytes"]],
        "shards": shards(on["state"]),
        "resume": resume(on["trainer"], on["state"]),
        "sharded_fraction": sharded_fraction(on["state"]),
    }


def resume(trainer, state) -> dict:
    """save_checkpoint of the split state, restore_checkpoint into `trainer.init()`: the same bits, each leaf
    placed as trainer.state_sharding says (every device keeping its own shard)."""
    import tempfile

    import jax
    import numpy as np

    from clip_jax.train import restore_checkpoint, save_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(folder, state, data={"next_batch": STEPS})
        restored, data = restore_checkpoint(folder, like=trainer.init())
    pairs = list(zip(jax.tree.leaves(state), jax.tree.leaves(restored)))
    shardings = jax.tree.leaves(trainer.state_sharding)
    return {
        "equal": all(np.array_equal(np.asarray(a), np.asarray(b)) and a.dtype == b.dtype for a, b in pairs),
        "placed": all(b.sharding.is_equivalent_to(s, b.ndim) for (_, b), s in zip(pairs, shardings)),
        "leaves": len(pairs), "data": data,
    }


def shards(state) -> dict:
    """name -> [global shape, one device's shard shape, spec] for every param and its first Adam moment."""
    from clip_jax.roles import flat_name

    out = {}
    for prefix, tree in (("", state.params), ("mu:", state.opt_state[0].mu)):
        for path, x in __import__("jax").tree_util.tree_leaves_with_path(tree):
            out[prefix + flat_name(path)] = [list(x.shape), list(x.addressable_shards[0].data.shape),
                                             str(x.sharding.spec)]
    return out


def sharded_fraction(state) -> float:
    """The fraction of the params' elements that are split over "data" (FSDP_MIN_SIZE keeps the small ones whole)."""
    import jax

    leaves = jax.tree.leaves(state.params)
    split = sum(x.size for x in leaves if "data" in str(x.sharding.spec))
    return split / sum(x.size for x in leaves)


def batch_checks(r: dict) -> None:
    """global_batch on one process: the whole batch, split over "data", values unchanged; a batch of another
    number of images than texts refused."""
    import jax
    import numpy as np

    from clip_jax.parallel import make_mesh
    from clip_jax.train import Trainer, optimizer
    from tests.tiny import TRAIN, tiny_model, train_batch

    trainer = Trainer(tiny_model(TRAIN), optimizer(1e-3, 10, 1), mesh=make_mesh())
    images, tokens = train_batch(16)
    gi, gt = trainer.global_batch(images, tokens)
    r["global_batch"] = {
        "shapes": [list(gi.shape), list(gt.shape)],
        "equal": bool(np.array_equal(np.asarray(gi), images) and np.array_equal(np.asarray(gt), tokens)),
        "rows_per_device": sorted({s.data.shape[0] for s in gi.addressable_shards}),
        "devices": len(gi.sharding.device_set),
    }
    try:
        trainer.global_batch(images, tokens[:8])
    except Exception as e:  # noqa: BLE001 - the test asserts on the type and message
        r["global_batch"]["error"] = [type(e).__name__, str(e)]
    assert jax.device_count() == 8


def main(out_path: str, names: list[str]) -> None:
    import time

    import jax

    from clip_jax import parallel
    from clip_jax.parallel import make_mesh
    from tests.tiny import TRAIN, tiny_model, train_batch

    r: dict = {"device_count": jax.device_count(), "seconds": {}}
    clip_batches = [train_batch(16, seed=i) for i in range(STEPS)]
    siglip_batches = [siglip_batch(16, seed=i) for i in range(STEPS)]
    # The tiny Siglip's matrices are 32 wide (1024 elements): below the default floor, which would leave it
    # all replicated. A lower floor (512) splits its matrices, so the sigmoid case has something to split.
    floor = parallel.FSDP_MIN_SIZE
    cases = {
        "softmax8": (floor, lambda: compare(tiny_model(TRAIN), clip_batches, make_mesh(), "softmax")),
        "sigmoid8": (2**9, lambda: compare(tiny_siglip(), siglip_batches, make_mesh(), "sigmoid")),
        "softmax4x2": (floor, lambda: compare(tiny_model(TRAIN), clip_batches, make_mesh(2), "softmax")),
    }
    for name in names or ("sigmoid8",):
        parallel.FSDP_MIN_SIZE, case = cases[name]
        start = time.perf_counter()
        r[name] = case()
        r["seconds"][name] = round(time.perf_counter() - start, 1)
    batch_checks(r)
    Path(out_path).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
