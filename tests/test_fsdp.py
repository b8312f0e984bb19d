"""FSDP (Trainer(fsdp=True), clip_jax.parallel.param_specs(..., fsdp=True)): the specs' rule on one device, and
over 8 host devices (tests/fsdp_checks.py, in a subprocess started with
XLA_FLAGS=--xla_force_host_platform_device_count=8 before the first test, so it runs beside them) the same
steps as replicated training, the state really split, and Trainer.global_batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec as P

from clip_jax import parallel
from clip_jax.errors import InputError
from clip_jax.model import abstract_model
from clip_jax.roles import flat_name
from clip_jax.train import Trainer, optimizer
from tests.loss_checks import module_run
from tests.tiny import TRAIN

ROOT = Path(__file__).resolve().parents[1]


# The 8-device subprocess (the sigmoid case: a Siglip, its ring, FSDP), started before this module's first test.
device_run, checks = module_run("fsdp_checks.py", 8, timeout=600)
# budget: the softmax case (a CLIP, FSDP) is slow, another 8-device subprocess of ~30 s; the default run
# checks FSDP with the softmax loss against one pass in tests/test_gradient_cache.py (fsdp_lit).
CASES = ["sigmoid8", pytest.param("softmax8", marks=pytest.mark.slow)]


def run_checks(out: Path, *names: str) -> dict:
    """tests/fsdp_checks.py's cases `names` in an 8-device subprocess, waited for. -> its JSON."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fsdp_checks.py"), str(out), *names],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def softmax8(tmp_path_factory) -> dict:
    return run_checks(tmp_path_factory.mktemp("fsdp_softmax8") / "checks.json", "softmax8")["softmax8"]


def case_checks(case: str, checks: dict, request) -> dict:
    """The case's results: from the module's subprocess, or (softmax8) from its own."""
    return checks[case] if case in checks else request.getfixturevalue(case)


class Mesh4x2:  # param_specs reads only the axis sizes
    shape = {"data": 4, "model": 2}


def specs_by_name(mesh, fsdp: bool, min_size: int | None = None) -> dict[str, P]:
    """TRAIN's param specs by clip_jax name (from the shapes: nothing allocated)."""
    _, state = abstract_model(TRAIN)
    specs = parallel.param_specs(state, mesh, fsdp=fsdp, min_size=min_size)
    return {flat_name(p): s for p, s in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P))}


def test_fsdp_specs_rule():
    """The largest dim that "model" leaves free and "data" (4) divides gets "data", the declared "model" split
    kept; below the size floor, or with no such dim, a param stays as it was; fsdp=False is today's rule."""
    plain, fsdp = specs_by_name(Mesh4x2(), False), specs_by_name(Mesh4x2(), True)
    assert plain["transformer.resblocks.0.mlp.c_fc.kernel"] == P(None, "model")
    assert plain["token_embedding.embedding"] == P()
    assert fsdp["transformer.resblocks.0.mlp.c_fc.kernel"] == P("data", "model")  # [64, 256]: dim 1 is "model"'s
    assert fsdp["token_embedding.embedding"] == P("data", None)  # [1000, 64]: the largest dim
    assert fsdp["visual.conv1.kernel"] == P(None, None, None, "data")  # [16, 16, 3, 64]: 64 is the largest
    assert fsdp["transformer.resblocks.0.attn.out_proj.kernel"] == P("model", None)  # 4096 < FSDP_MIN_SIZE
    assert fsdp["logit_scale"] == P() and fsdp["ln_final.scale"] == P()
    low = specs_by_name(Mesh4x2(), True, min_size=1)
    assert low["transformer.resblocks.0.attn.out_proj.kernel"] == P("model", "data")
    assert low["ln_final.scale"] == P("data")  # [64]
    assert low["logit_scale"] == P()  # a scalar has no dim to split

    class Mesh3:  # a data axis of 3: the dims it divides are conv1's 3 input channels and q|k|v's 192
        shape = {"data": 3, "model": 1}

    three = specs_by_name(Mesh3(), True, min_size=1)
    assert three["token_embedding.embedding"] == P()  # neither 1000 nor 64
    assert three["visual.conv1.kernel"] == P(None, None, "data", None)
    assert three["transformer.resblocks.0.attn.in_proj.kernel"] == P(None, "data")


def test_fsdp_needs_a_mesh(tiny):
    with pytest.raises(InputError, match="fsdp=True splits the state"):
        Trainer(tiny, optimizer(1e-3, 10, 1), fsdp=True)


@pytest.mark.parametrize("case", CASES)
def test_fsdp_steps_equal_replicated(checks, case, request):
    """3 AdamW steps with fsdp=True equal those with fsdp=False on the same 8-device mesh (a tiny CLIP with the
    softmax loss; a tiny Siglip with the sigmoid ring). The math is the same; what differs is how the gradient
    reaches each device (one all-reduce of everything vs XLA's reduction of each device's share), so the sums
    round in another order: losses to 1e-6 relative (measured equal to the last bit or one ulp), the Adam
    moments to 1e-6 (measured <= 3e-8), and the params to 5e-5 (measured <= 4e-6; Adam's m / sqrt(v) turns a
    rounding difference of a near-zero gradient into a fraction of the learning rate, 1e-3, as in
    tests/test_train.py's data-parallel test). A lost or doubled gradient share moves params by ~1e-3."""
    c = case_checks(case, checks, request)
    off, on = c["losses"]
    assert on == pytest.approx(off, rel=1e-6)
    assert off[-1] < off[0]  # it trains
    assert c["max_opt_diff"] <= 1e-6 and c["max_param_diff"] <= 5e-5, c
    assert c["max_update"] > 1e-3  # the params moved: equal params are not two no-ops


@pytest.mark.parametrize("case", CASES)
def test_fsdp_splits_the_state(checks, case, request):
    """The params and Adam's moments really live split: a big weight's shard on each device is 1/8 of it,
    scalars and small vectors stay whole, most of the params' elements are split, and the compiled step's
    arguments (the state and the batch) per device shrink to well under half; the step gathers params it
    doesn't gather without fsdp."""
    c = case_checks(case, checks, request)
    name, shape, shard, spec = {
        "softmax8": ("token_embedding.embedding", [1000, 64], [125, 64], "P('data', None)"),
        "sigmoid8": ("text.transformer.resblocks.0.mlp.c_fc.kernel", [32, 64], [32, 8], "P(None, 'data')"),
    }[case]
    assert c["shards"][name] == [shape, shard, spec]
    assert c["shards"]["mu:" + name] == [shape, shard, spec]
    assert c["shards"]["logit_scale"] == [[], [], "P()"]
    assert c["sharded_fraction"] > 0.8
    off, on = c["argument_bytes"]
    assert on < 0.3 * off, c["argument_bytes"]  # measured 0.29 (softmax) and 0.17 (sigmoid)
    assert c["collectives"][1]["all-gather"] > c["collectives"][0]["all-gather"]


@pytest.mark.parametrize("case", CASES)
def test_fsdp_state_resumes_bit_exact(checks, case, request):
    """The split state saved with save_checkpoint and restored into trainer.init() comes back bit for bit, each
    leaf placed as trainer.state_sharding says."""
    r = case_checks(case, checks, request)["resume"]
    assert r["equal"] and r["placed"] and r["leaves"] > 50, r
    assert r["data"] == {"next_batch": 3}


def test_global_batch_on_one_process(checks):
    """global_batch: on one process the whole batch, split over the 8 devices (2 rows each), values as given;
    unequal images and texts refused."""
    g = checks["global_batch"]
    assert g["shapes"] == [[16, 32, 32, 3], [16, 8]] and g["equal"]
    assert g["rows_per_device"] == [2] and g["devices"] == 8
    assert g["error"] == ["InputError", "a batch of matching pairs needs as many images as texts, got images "
                                        "(16, 32, 32, 3) and tokens (8, 8)"]


@pytest.mark.slow  # budget: another 8-device subprocess of ~40 s of compiling
def test_fsdp_composes_with_model_parallel(tmp_path):
    """On a 4 x 2 (data x model) mesh, fsdp=True adds "data" to the Megatron split (an MLP kernel [64, 256]
    declared (None, "model") becomes ("data", "model"): a [16, 128] shard) and steps as fsdp=False does, to the
    tolerances of test_fsdp_steps_equal_replicated (measured: losses within one ulp, params 3.3e-6)."""
    c = run_checks(tmp_path / "checks.json", "softmax4x2")["softmax4x2"]
    assert c["mesh"] == {"data": 4, "model": 2}
    kernel = "visual.transformer.resblocks.0.mlp.c_fc.kernel"
    assert c["shards"][kernel] == [[64, 256], [16, 128], "P('data', 'model')"]
    assert c["shards"]["mu:" + kernel] == c["shards"][kernel]
    off, on = c["losses"]
    assert on == pytest.approx(off, rel=1e-6)
    assert c["max_opt_diff"] <= 1e-6 and c["max_param_diff"] <= 5e-5 and c["max_update"] > 1e-3, c
