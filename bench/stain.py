#!/usr/bin/env python3
"""Cost of stain normalization per image at sharding time: deepbc.shards.writer.encode_image (read,
check sha256, decode, [normalise], encode JPEG q95) on BreakHis-sized synthetic H&E images (700x460
PNG), with shards.stain_normalization none, macenko and reinhard, interleaved in one process on one
core. Prints one JSON line: per method, milliseconds per image (median, min and max over the
repeats, each repeat the mean over all images) and the ratio of its median to none's.

    .venv/bin/python bench/stain.py --images 16 --repeats 5
"""

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="synthetic 700x460 images (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over them per method (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):  # one core: the cost per encoding worker
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import numpy as np
    from PIL import Image

    from deepbc.bench.common import emit, write_he_images
    from deepbc.shards import stain
    from deepbc.shards.writer import encode_image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rels = [f"img{i:04d}.png" for i in range(args.images + 1)]
        write_he_images(root, rels, args.seed)
        # The reference is an extra image, not one of those normalised (as the workflow requires).
        reference = np.asarray(Image.open(root / rels.pop()).convert("RGB"))
        methods = {"none": None, **{m: stain.fit(reference, m) for m in stain.METHODS}}
        files = [(str(root / r), hashlib.sha256((root / r).read_bytes()).hexdigest()) for r in rels]
        times = {m: [] for m in methods}
        fallbacks = {m: 0 for m in methods}
        for m, params in methods.items():  # warm-up: page cache, imports
            encode_image(files[0][0], "jpeg", 95, 0, files[0][1], stain=params)
        for _ in range(args.repeats):
            for m, params in methods.items():  # interleaved: machine load hits every method alike
                start = time.process_time()
                for path, digest in files:
                    result = encode_image(path, "jpeg", 95, 0, digest, stain=params)
                    fallbacks[m] += bool(result[3])
                times[m].append(1000 * (time.process_time() - start) / len(files))
        base = float(np.median(times["none"]))
        results = {m: {"ms_per_image_median": round(float(np.median(t)), 2), "ms_min": round(min(t), 2),
                       "ms_max": round(max(t), 2), "ratio_to_none": round(float(np.median(t)) / base, 2),
                       "fallbacks": fallbacks[m]} for m, t in times.items()}
    for m, r in results.items():
        print(f"{m}: {r}", file=sys.stderr)
    emit("stain", {"images": args.images, "repeats": args.repeats, "size": "700x460", "format": "jpeg q95",
                   "methods": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
