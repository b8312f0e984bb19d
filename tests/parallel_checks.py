"""The 8-device half of tests/test_parallel.py: run as a script in a subprocess whose XLA_FLAGS ask for 8
host CPU devices (JAX reads them once, at import, so the rest of the suite keeps its single device).

    python tests/parallel_checks.py OUT.json

Computes sharded results and the single-device ones on the same inputs and writes what the tests assert
on (max differences, shapes, counts) as JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def max_diff(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max()) if a.size else 0.0


def main(out_path: str) -> None:
    import jax
    import numpy as np
    from PIL import Image

    import clip_jax
    from clip_jax import parallel
    from clip_jax.image import image_transform
    from clip_jax.tokenizer import tokenize
    from tests.tiny import TINY, tiny_model

    r: dict = {"device_count": jax.device_count()}
    model = tiny_model()
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (21, 32, 32, 3)).astype(np.uint8)  # 21: a ragged last batch of 5
    texts = ["a dog", "a photo of a cat on a mat", "x", "two red cars parked next to each other in the rain"] * 5
    tokens = tokenize(texts)

    # Single-device references, the plain jitted model on device 0.
    ref_img = np.asarray(model.encode_image(images))
    ref_txt = np.asarray(model.encode_text(tokens))
    ref_logits = np.asarray(clip_jax.clip_logits(model, images, tokens)[0])

    # Data parallel over 8 devices, params replicated.
    s = parallel.ShardedCLIP(model, parallel.make_mesh(), batch_size=8)
    r["mesh"] = dict(s.mesh.shape)
    r["image_dp"] = max_diff(s.encode_image(images), ref_img)
    r["image_dp_compiles"] = s._fns["image", False]._cache_size()  # one program for the ragged job
    r["image_dp_small"] = max_diff(s.encode_image(images[:3]), ref_img[:3])  # fewer rows than devices
    r["image_dp_normalized"] = max_diff(s.encode_image(images, normalized=True),
                                        np.asarray(clip_jax.l2_normalize(ref_img)))
    floats = ((images / 255.0 - np.array(TINY.image_mean)) / np.array(TINY.image_std)).astype(np.float32)
    r["image_dp_float"] = max_diff(s.encode_image(floats), np.asarray(model.encode_image(floats)))
    r["text_dp"] = max_diff(s.encode_text(tokens), ref_txt)
    r["logits_dp"] = max_diff(s.clip_logits(images, tokens)[0], ref_logits)
    r["empty_shape"] = list(s.encode_image(images[:0]).shape)

    # The params really are replicated on all 8 devices.
    kernel = s.params["visual"]["transformer"]["resblocks"][0]["mlp"]["c_fc"]["kernel"][...]
    r["replicated_devices"] = len(kernel.sharding.device_set)

    # Data x model: big kernels split along "model"; results equal the unsharded model.
    for mp in (2, 4):
        sm = parallel.ShardedCLIP(model, parallel.make_mesh(mp), batch_size=8)
        fc = sm.params["visual"]["transformer"]["resblocks"][0]["mlp"]["c_fc"]["kernel"][...]
        proj = sm.params["transformer"]["resblocks"][1]["attn"]["out_proj"]["kernel"][...]
        r[f"mp{mp}"] = {
            "mesh": dict(sm.mesh.shape),
            "c_fc_shard": list(fc.addressable_shards[0].data.shape), "c_fc": list(fc.shape),
            "out_proj_shard": list(proj.addressable_shards[0].data.shape), "out_proj": list(proj.shape),
            "image": max_diff(sm.encode_image(images), ref_img),
            "text": max_diff(sm.encode_text(tokens), ref_txt),
        }

    # jax.pmap with the pure form: each device scores its own 2 images against its own 3 texts.
    pm = parallel.pmap_logits(model)
    per_dev_images = images[:16].reshape(8, 2, 32, 32, 3)
    per_dev_tokens = np.stack([tokens[i % 4: i % 4 + 3] for i in range(8)])
    got = np.asarray(pm(per_dev_images, per_dev_tokens))
    want = np.stack([np.asarray(clip_jax.clip_logits(model, per_dev_images[i], per_dev_tokens[i])[0])
                     for i in range(8)])
    r["pmap_shape"] = list(got.shape)
    r["pmap"] = max_diff(got, want)

    # Files: a bad one in the middle, a ragged last batch; each row equals encode_image of its pixels.
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(11):
            p = Path(tmp) / f"{i}.png"
            Image.fromarray(rng.randint(0, 256, (40 + 3 * i, 48, 3)).astype(np.uint8)).save(p)
            paths.append(str(p))
        (Path(tmp) / "bad.jpg").write_bytes(b"not a jpeg")
        paths.insert(4, str(Path(tmp) / "bad.jpg"))
        transform = image_transform(32)
        batches = list(s.embed_image_files(paths, transform, num_threads=2, normalized=False))
        feats = np.concatenate([b.features for b in batches])
        ok = np.concatenate([b.ok for b in batches])
        good = [p for p in paths if not p.endswith("bad.jpg")]
        want = np.asarray(model.encode_image(np.stack([transform.pixels(p) for p in good])))
        r["files_starts"] = [b.start for b in batches]
        r["files_ok"] = ok.tolist()
        r["files_errors"] = [e for b in batches for e in b.errors]
        r["files"] = max_diff(feats[ok], want)
        r["files_bad_row_zero"] = bool((feats[~ok] == 0).all())

    Path(out_path).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
