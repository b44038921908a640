"""Predictor benchmarks on CPU, medians over repeats; each measurement in a fresh process.

Measures (1 torch thread): inference throughput of every frozen encoder
(``stcore.models.encoders.ENCODERS``, batch 32, random patches) at 224 and 112 px with peak memory;
training of every model in ``stcore.models.MODELS`` on the first patient-out fold of her2st (image
sections, 100 µm patches at 112 px, raw targets, EfficientNet-Lite0 embeddings at 224 px): wall
time of ``run_fold`` (create, fit, predict test), training steps, seconds per step (training loop
with validation) and peak memory. Neural models run ``--steps`` steps (default 20). The data,
patches and embeddings are prepared once by a warm-up process and read from the cache
(``$STCORE_CACHE_DIR``) by the rest; the row "(task only)" is that loading alone, the baseline of
the models' time and memory.

    .venv/bin/python benchmarks/bench_predict.py [--repeats 3] [--steps 20] [--quick]

``--quick``: 1 repeat, encoders at 112 px only, 5 steps (checks that the script runs).
Writes ``benchmarks/out/predict.json`` (with provenance) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json

from _common import child, markdown, median, write_results

from stcore.models import MODELS
from stcore.models.encoders import ENCODERS

ENCODE = """
import json, resource, sys, torch
torch.set_num_threads(1)
from stcore.models.embeddings import encode_throughput
rate = encode_throughput(sys.argv[1], n=int(sys.argv[3]), size=int(sys.argv[2]), batch_size=32)
print(json.dumps({"rate": rate,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
TRAIN = """
import json, resource, sys, time, torch
torch.set_num_threads(1)
from stcore import preprocess as pp, predict
from stcore.data import extract_patches
from stcore.data.splits import folds
from stcore.models.embeddings import embed
name, params = sys.argv[1], json.loads(sys.argv[2])
t = time.perf_counter()
a = pp.preprocess("her2st")
a = a[a.obs["has_image"].to_numpy()].copy()
store = extract_patches(a, size_um=100, out_px=112)
emb = embed(store, "efficientnet_lite0", size=224)
task = predict.build_task(a, store, folds(a, "patient_out")[0], target="raw",
                          embeddings={"efficientnet_lite0": emb})
out = {"seconds": time.perf_counter() - t, "spots": int(task.n_obs), "train": int(task.train.sum())}
if name != "none":
    t = time.perf_counter()
    model, _ = predict.run_fold(name, task, params=params, progress=False)
    hist = getattr(model, "history", [])
    stages = {h.get("stage", "") for h in hist}
    steps = sum(max(h["step"] for h in hist if h.get("stage", "") == s) for s in stages)
    out = {"seconds": time.perf_counter() - t, "steps": steps, "best_step": model.best_step,
           "s_per_step": model.train_seconds / steps if steps else None}
print(json.dumps({**out, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
EXTRA = {"stnet": {"encoder": "efficientnet_lite0", "size": 112}, "shufflenet": {"size": 112},
         "vit": {"size": 112}, "bleep": {"encoder": "efficientnet_lite0", "size": 112}}
CLOSED_FORM = ("train_mean", "ridge")  # no max_steps


def params_of(name: str, steps: int) -> dict:
    return {**EXTRA.get(name, {}), **({} if name in CLOSED_FORM else {"max_steps": steps})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="training steps of the neural models")
    parser.add_argument("--n", type=int, default=128, help="patches timed per encoder run")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 112 px only, 5 steps")
    args = parser.parse_args()
    repeats, steps, sizes = (1, 5, (112,)) if args.quick else (args.repeats, args.steps, (224, 112))

    encoders = []
    for name in ENCODERS:
        for size in sizes:
            print(f"encoder {name} at {size} px ...", flush=True)
            runs = [child(ENCODE, name, str(size), str(args.n)) for _ in range(repeats)]
            encoders.append({"encoder": name, "px": size,
                             "patches_s": median(r["rate"] for r in runs),
                             "peak_mib": round(median(r["peak_mib"] for r in runs))})

    print("warm-up: her2st, patches, embeddings ...", flush=True)
    task = child(TRAIN, "none", "{}")
    models = []
    for name in ["none", *MODELS]:
        print(f"model {name} ...", flush=True)
        params = params_of(name, steps) if name != "none" else {}
        runs = [child(TRAIN, name, json.dumps(params)) for _ in range(repeats)]
        row = {"model": name if name != "none" else "(task only)", "params": params,
               "seconds": median((r["seconds"] for r in runs), 3),
               "peak_mib": round(median(r["peak_mib"] for r in runs))}
        if name != "none":
            per_step = [r["s_per_step"] for r in runs if r["s_per_step"] is not None]
            row.update(steps=runs[0]["steps"], best_step=runs[0]["best_step"],
                       s_per_step=median(per_step, 3) if per_step else None)
        models.append(row)

    write_results("predict", {"encoders": encoders, "models": models}, repeats, quick=args.quick,
                  steps=steps, n_patches=args.n, task=task)
    print(markdown(["encoder", "px", f"patches/s (batch 32, {args.n} patches)", "peak RSS (MiB)"],
                   ([e["encoder"], e["px"], e["patches_s"], e["peak_mib"]] for e in encoders)))
    print(f"\nher2st fold 1 (patient-out): {task['spots']} spots, {task['train']} train\n")
    print(markdown(["model", "wall s (run_fold)", "steps", "s/step", "best step", "peak RSS (MiB)"],
                   ([m["model"], m["seconds"], *("–" if m.get(k) is None else m[k] for k in
                     ("steps", "s_per_step", "best_step")), m["peak_mib"]] for m in models)))


if __name__ == "__main__":
    main()
