"""Sharded scoring (clip_jax.parallel) on 8 host CPU devices, against the plain single-device model.

The 8-device run happens once, in a subprocess (tests/parallel_checks.py) started with
XLA_FLAGS=--xla_force_host_platform_device_count=8: JAX fixes its device count at import, and the rest of
the suite must keep its one device. Each test below asserts on one of its measurements.

Tolerance, float32 on the CPU: sharded features equal single-device ones to 1e-5 absolute (features of
norm ~4). They are not bit-equal because each device multiplies a batch of B/8 rows, or 1/M of a kernel,
and XLA's CPU matmuls block (and so round) by shape; measured <= 1.5e-6. Logits, at scale 1/0.07 = 14.3,
to 1e-4. A wrong row order, a padding row leaking in, or a mis-sharded param moves results by >= 1e-1.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clip_jax import parallel
from tests.conftest import device_checks, start_device_checks

FEATURE_ATOL = 1e-5
LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def eight_devices(tmp_path_factory) -> Path:
    """The 8-device subprocess, started (once a run, for every xdist worker) before this module's first test,
    so it runs beside the one-device tests; -> its folder."""
    return start_device_checks(tmp_path_factory, "parallel_checks")


@pytest.fixture(scope="module")
def checks(eight_devices) -> dict:
    return device_checks(eight_devices)


# --- in this process (one device): the pieces that need no mesh of 8 ---------------------------------


def test_prefetch_runs_ahead_in_order():
    produced = []

    def items():
        for i in range(6):
            produced.append(i)
            yield i

    seen = []
    for i in parallel.prefetch(items(), size=2):
        deadline = time.time() + 5
        while len(produced) < min(i + 3, 6) and time.time() < deadline:  # the producer fills the queue
            time.sleep(0.01)
        assert len(produced) >= min(i + 3, 6), (i, produced)
        seen.append(i)
    assert seen == list(range(6))


def test_prefetch_reraises_producer_errors():
    def items():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in parallel.prefetch(items()):
            got.append(x)
    assert got == [1]


def test_prefetch_stops_producer_when_consumer_leaves():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    gen = parallel.prefetch(items(), size=2)
    assert next(gen) == 0
    gen.close()
    n = len(produced)
    time.sleep(0.2)
    assert len(produced) == n <= 4
    assert not any(t.name == "clip_jax_prefetch" for t in threading.enumerate())


def test_make_mesh_rejects_bad_model_axis():
    import jax

    with pytest.raises(ValueError, match="must divide the number of devices"):
        parallel.make_mesh(3 * jax.device_count() + 1)


def test_param_specs_follow_rules():
    import jax
    from jax.sharding import PartitionSpec as P

    class Mesh2:  # param_specs only reads the axis sizes
        shape = {"data": 4, "model": 2}

    block = {
        "mlp": {"c_fc": {"kernel": np.zeros((4, 8)), "bias": np.zeros(8)}, "c_proj": {"kernel": np.zeros((8, 4))}},
        "attn": {"in_proj": {"kernel": np.zeros((4, 12))}, "out_proj": {"kernel": np.zeros((3, 4))}},
        "ln_1": {"scale": np.zeros(4)},
    }
    specs = parallel.param_specs({"transformer": {"resblocks": {0: block}}}, Mesh2())["transformer"]["resblocks"][0]
    assert specs["mlp"]["c_fc"]["kernel"] == P(None, "model")
    assert specs["mlp"]["c_fc"]["bias"] == P("model")
    assert specs["mlp"]["c_proj"]["kernel"] == P("model", None)
    assert specs["attn"]["in_proj"]["kernel"] == P()  # fused q|k|v: replicated, each device takes its heads
    assert specs["attn"]["out_proj"]["kernel"] == P()  # 3 rows do not split in 2: replicated
    assert specs["ln_1"]["scale"] == P()
    one = parallel.param_specs(block, parallel.make_mesh(1))
    assert set(jax.tree.leaves(one, is_leaf=lambda x: isinstance(x, P))) == {P()}


def test_sharded_rejects_channels_first():
    from .tiny import tiny_model

    s = parallel.ShardedCLIP(tiny_model(), batch_size=4)
    with pytest.raises(ValueError, match="channels-first"):
        s.encode_image(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="transform makes"):
        from clip_jax.image import image_transform

        list(s.embed_image_files(["x.png"], image_transform(64)))


def test_text_not_trimmed_for_bidirectional_towers():
    import dataclasses

    from clip_jax.tokenizer import tokenize

    from .tiny import TINY, tiny_model

    config = dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, no_causal_mask=True, pool_type="last"))
    model = tiny_model(config)
    tokens = tokenize(["a dog", "a cat on a mat"])
    # Trimming would change these features (and the model refuses short tokens for such towers).
    got = parallel.ShardedCLIP(model, batch_size=4).encode_text(tokens)
    np.testing.assert_allclose(got, np.asarray(model.encode_text(tokens)), atol=FEATURE_ATOL, rtol=0)


def test_text_row_without_eot_is_kept_whole():
    """A row with no end token has no known end: ShardedCLIP, like encode_text's auto mode, keeps its
    batch at full length instead of trimming (or refusing) it, so both give the same features."""
    from clip_jax.tokenizer import tokenize

    from .tiny import TINY, tiny_model

    model = tiny_model(TINY)
    tokens = tokenize(["a dog", "a cat on a mat", "x"], context_length=TINY.text.context_length)
    tokens[2, 2:] = 320  # "a" repeated to the end, no EOT ...
    tokens[2, 50] = 49000  # ... and the largest id, where the tower pools, far past the other rows' ends
    got = parallel.ShardedCLIP(model, batch_size=4, text_buckets=(8,)).encode_text(tokens)
    np.testing.assert_allclose(got, np.asarray(model.encode_text(tokens)), atol=FEATURE_ATOL, rtol=0)


def _record_steps(sharded: parallel.ShardedCLIP) -> list[tuple[str, int]]:
    """Wrap `sharded`'s compiled programs: each step appends (kind, rows of the padded batch)."""
    steps: list[tuple[str, int]] = []
    for key, fn in list(sharded._fns.items()):
        sharded._fns[key] = lambda leaves, x, fn=fn, kind=key[0]: (steps.append((kind, x.shape[0])), fn(leaves, x))[1]
    return steps


def test_bucket_sizes():
    assert parallel._bucket_sizes(256, 1, None) == (8, 16, 32, 64, 128, 256)
    assert parallel._bucket_sizes(256, 8, None) == (64, 128, 256)  # from 8 rows a device
    assert parallel._bucket_sizes(24, 1, None) == (8, 16, 24)  # batch_size itself is always one
    assert parallel._bucket_sizes(4, 2, None) == (4,)
    assert parallel._bucket_sizes(20, 4, (3, 10, 50)) == (4, 12, 20)  # multiples of the data axis, capped
    assert parallel._bucket_sizes(256, 1, ()) == (256,)


def test_short_batches_take_the_smallest_bucket_and_keep_their_rows(tmp_path):
    """A 14-image job at batch 256 steps one 16-row program, not a 256-row one; a 300-image job steps 256
    then 64. Rows equal the full-batch path's (buckets=(): every batch padded to 256) to FEATURE_ATOL (XLA's
    CPU matmuls round by shape), and bit for bit whatever the padding rows of their bucket hold."""
    from PIL import Image

    from clip_jax.image import image_transform

    from .tiny import tiny_model

    model = tiny_model()
    s, full = parallel.ShardedCLIP(model, batch_size=256), parallel.ShardedCLIP(model, batch_size=256, buckets=())
    assert [s.padded_rows(n) for n in (1, 3, 14, 129, 256)] == [8, 8, 16, 256, 256]
    steps, full_steps = _record_steps(s), _record_steps(full)
    images = np.random.RandomState(0).randint(0, 256, (300, 32, 32, 3)).astype(np.uint8)

    got = s.encode_image(images[:14])
    assert steps == [("image", 16)]
    np.testing.assert_allclose(got, full.encode_image(images[:14]), atol=FEATURE_ATOL, rtol=0)
    assert full_steps == [("image", 256)]
    np.testing.assert_array_equal(s.encode_image(images[:15])[:14], got)  # another image in a padding row

    steps.clear()
    np.testing.assert_allclose(s.encode_image(images), full.encode_image(images), atol=FEATURE_ATOL, rtol=0)
    assert steps == [("image", 256), ("image", 64)]
    fresh = parallel.ShardedCLIP(model, batch_size=256)  # s's programs are wrapped: count on another
    for n in (14, 13, 9, 16):  # one bucket: one program, reused
        fresh.encode_image(images[:n])
    assert fresh._fns["image", False]._cache_size() == 1

    # Files: the same buckets, and the bad file's row stays out whatever the padding.
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(images[i]).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    paths.insert(1, str(tmp_path / "bad.png"))
    steps.clear()
    batches = list(s.embed_image_files(paths, image_transform(32), num_threads=1, normalized=False))
    assert steps == [("image", 8)]
    assert batches[0].ok.tolist() == [True, False, True, True] and not batches[0].features[1].any()
    np.testing.assert_allclose(batches[0].features[[0, 2, 3]], full.encode_image(images[:3]), atol=FEATURE_ATOL,
                               rtol=0)


# --- 8 CPU devices, in a subprocess -----------------------------------------------------------------


def test_eight_devices_data_mesh(checks):
    assert checks["device_count"] == 8
    assert checks["mesh"] == {"data": 8, "model": 1}
    assert checks["replicated_devices"] == 8


def test_data_parallel_images_equal_single_device(checks):
    # 21 images, batch 8: a ragged last batch padded and unpadded; uint8 normalized on the devices.
    assert checks["image_dp"] < FEATURE_ATOL
    assert checks["image_dp_small"] < FEATURE_ATOL  # 3 rows over 8 devices
    assert checks["image_dp_normalized"] < FEATURE_ATOL
    assert checks["image_dp_float"] < FEATURE_ATOL
    assert checks["empty_shape"] == [0, 16]


def test_ragged_job_compiles_once(checks):
    assert checks["image_dp_compiles"] == 1


def test_data_parallel_text_and_logits(checks):
    assert checks["text_dp"] < FEATURE_ATOL  # batches trimmed to token buckets: the same features
    assert checks["logits_dp"] < LOGIT_ATOL


@pytest.mark.parametrize("mp", [2, 4])
def test_model_axis_splits_kernels_and_keeps_results(checks, mp):
    r = checks[f"mp{mp}"]
    assert r["mesh"] == {"data": 8 // mp, "model": mp}
    # c_fc split along its output columns, out_proj along its input rows (Megatron pairs).
    assert r["c_fc_shard"] == [r["c_fc"][0], r["c_fc"][1] // mp]
    assert r["out_proj_shard"] == [r["out_proj"][0] // mp, r["out_proj"][1]]
    assert r["image"] < FEATURE_ATOL
    assert r["text"] < FEATURE_ATOL


def test_pmap_logits(checks):
    assert checks["pmap_shape"] == [8, 2, 3]
    assert checks["pmap"] < LOGIT_ATOL


def test_files_skip_bad_ones_in_order(checks):
    assert checks["files_starts"] == [0, 8]
    assert checks["files_ok"] == [True] * 4 + [False] + [True] * 7
    assert [Path(p).name for p, _ in checks["files_errors"]] == ["bad.jpg"]
    assert "not a recognized image format" in checks["files_errors"][0][1]
    assert checks["files"] < FEATURE_ATOL
    assert checks["files_bad_row_zero"]
