"""clip_jax.jobs.train_log: metrics.jsonl (one object a step, flushed, cut back on resume) and the TensorBoard
events, read back here from the file's TFRecord framing with tensorboardX's own protobufs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given

from clip_jax.jobs.train_log import METRICS, TENSORBOARD, TrainLog, read_metrics, scalar_tag, truncate_metrics

from .fuzz import FUZZ, bounded, mutated


def read_events(folder: Path) -> list:
    """Every Event in the TensorBoard files of `folder`, in file order (oldest file first), each record's
    length and data checked against their masked CRC-32C as TensorBoard checks them."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            header = data[at:at + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[at + 8:at + 12])[0] == masked_crc32c(header)
            body = data[at + 12:at + 12 + length]
            assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == masked_crc32c(body)
            events.append(event_pb2.Event.FromString(body))
            at += 16 + length
    return events


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the scalar summaries, as TensorBoard shows them: a SessionLog START with
    a step (a resumed writer's purge_step) discards the earlier events at that step or later."""
    out: dict[str, list[tuple[int, float]]] = {}
    for e in read_events(folder):
        if e.HasField("session_log") and e.session_log.status == e.session_log.START:
            out = {tag: [(s, v) for s, v in pts if s < e.step] for tag, pts in out.items()}
        for v in e.summary.value:
            out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def test_each_step_is_one_flushed_json_line_and_a_tensorboard_scalar(tmp_path):
    log = TrainLog(tmp_path)
    log.write(1, {"loss": 2.5, "lr": 1e-4, "epoch": 0})
    # Flushed at once: readable while the run goes on (a tail -f, a killed run).
    assert read_metrics(tmp_path / METRICS) == [{"step": 1, "loss": 2.5, "lr": 1e-4, "epoch": 0}]
    log.write(2, {"loss": float("nan"), "eval_acc1": 0.75})
    log.close()
    lines = (tmp_path / METRICS).read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"step": 1, "loss": 2.5, "lr": 1e-4, "epoch": 0},
                                              {"step": 2, "loss": None, "eval_acc1": 0.75}]  # NaN as null
    tb = scalars(tmp_path / TENSORBOARD)
    assert tb["train/loss"] == [(1, 2.5)]  # NaN is not a number JSON holds: left out of TensorBoard too
    assert tb["train/lr"] == [(1, pytest.approx(1e-4))] and tb["eval/acc1"] == [(2, 0.75)]


def test_a_resumed_log_drops_the_steps_past_its_checkpoint(tmp_path):
    with TrainLog(tmp_path) as log:
        for step in range(1, 7):
            log.write(step, {"loss": float(step)})
    with open(tmp_path / METRICS, "a") as f:
        f.write('{"step": 7, "loss": 7.0')  # a kill in the middle of a line
    with TrainLog(tmp_path, resume_step=4) as log:
        assert [r["step"] for r in log.records] == [1, 2, 3, 4]
        for step in range(5, 8):
            log.write(step, {"loss": 10.0 * step})
    records = read_metrics(tmp_path / METRICS)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0),
                                                         (6, 60.0), (7, 70.0)]
    # TensorBoard: the second writer's purge_step hides the first run's steps 5 and 6.
    assert scalars(tmp_path / TENSORBOARD)["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0),
                                                             (6, 60.0), (7, 70.0)]


def test_a_fresh_start_empties_a_log_left_without_a_checkpoint(tmp_path):
    (tmp_path / METRICS).write_text('{"step": 3, "loss": 1.0}\n')
    with TrainLog(tmp_path, resume_step=None) as log:
        log.write(1, {"loss": 5.0})
    assert read_metrics(tmp_path / METRICS) == [{"step": 1, "loss": 5.0}]


def test_truncate_keeps_the_file_when_nothing_goes(tmp_path):
    path = tmp_path / METRICS
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n')
    before = path.stat().st_mtime_ns, path.stat().st_ino
    assert [r["step"] for r in truncate_metrics(path, 5)] == [1, 2]
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
    assert truncate_metrics(tmp_path / "absent.jsonl", 3) == []


def test_other_processes_write_nothing(tmp_path):
    log = TrainLog(tmp_path / "run", enabled=False)
    assert log.write(3, {"loss": 1.5}) == {"step": 3, "loss": 1.5}
    log.close()
    assert not (tmp_path / "run").exists()


def test_tags():
    assert scalar_tag("loss") == "train/loss"
    assert scalar_tag("eval_mean_per_class_recall") == "eval/mean_per_class_recall"


@pytest.mark.parametrize("text", [
    "",  # empty
    '[1, 2]\n{"loss": 1}\n{"step": "1"}\n{"step": true}\n{"step": 1.5}\n',  # not records
    "\xff\xfe garbage\n",
    "[" * 100_000 + "\n",  # nested past the recursion limit
])
def test_damaged_lines_are_left_out(tmp_path, text):
    path = tmp_path / METRICS
    path.write_text(text + '{"step": 9, "loss": 1}\n', errors="surrogateescape")
    assert read_metrics(path) == [{"step": 9, "loss": 1}]


@FUZZ
@given(data=mutated(b'{"step": 1, "loss": 2.5}\n{"step": 2, "loss": null}\n'))
def test_read_metrics_fuzz(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("m") / METRICS
    path.write_bytes(data)
    records = bounded(lambda: read_metrics(path))
    assert all(isinstance(r, dict) and isinstance(r["step"], int) for r in records)
