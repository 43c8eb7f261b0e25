"""Does labelling the clips the model is least sure of save annotators' time? A simulation.

Why: videoloop orders tasks least certain first; this measures whether that order reaches a
given accuracy with fewer labels than random. A simulated annotator labels synthetic clips
(``training.video.synth``, classes that differ only in temporal order) from a pool, round by
round; each strategy starts from the same ``--seed-per-class`` clips, trains as the product's
training job does (its split, fine-tuning the last round's model), and labels ``--k`` more:
the ones the model is least sure of (``uncertainty:<measure>``), ``random`` ones, or the first
``--k`` of the order the product's ACQUISITION writes (``bald``, ``kcenter``, ``badge``: the
same embeddings, MC dropout and ``acquisition.choose_order`` as the refresh). It prints test
accuracy by labelled clips and at 8, 16 and 32 labels, the labels each strategy needed to reach
``--target`` with ratios to random, time per round, and plots the curves
(``bench/active_learning.png``). ``--methods`` crosses each strategy with the unlabelled-data
methods of issue 15 (``bench/unlabelled.py``'s METHODS: the TrainConfig fields, such as
PRETRAIN=order on the pool's unlabelled clips before the first model; later rounds fine-tune,
as the job does; a ``scratch `` prefix trains every round from scratch, as the job does under
TRAIN_SCRATCH_BELOW, so those methods run each round), so each gain can be told apart;
``--stop-at-target`` ends a run at the first
round that reaches ``--target`` (all that labels-to-target needs). The timeline set is
simulated by bench/active_learning_timeline.py, through this loop (``_annotate``). Each
(strategy, method, seed) runs in a spawned process of its own, ``--processes`` at a time. Run
from the repository root (not imported by the packages):

    .venv/bin/python bench/active_learning.py [--json FIGURES.json]

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOLDOUTS = ("product", "val", "none")


ACQUISITION = ("bald", "kcenter", "badge")
"""Strategies chosen by the product's own acquisition.choose_order (ACQUISITION)."""


def _parse_strategy(spec: str, default_measure: str) -> tuple[str, str | None]:
    """``random`` | ``uncertainty`` | ``uncertainty:<measure>`` | ``bald`` | ``kcenter`` |
    ``badge`` -> (kind, measure)."""
    from training.model.uncertainty import parse_measure

    kind, _, measure = spec.partition(":")
    if kind in ("random", *ACQUISITION) and not measure:
        return kind, None
    if kind == "uncertainty":
        try:
            return "uncertainty", parse_measure(measure or default_measure).value
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    raise SystemExit(
        f"unknown strategy {spec!r}: random, uncertainty[:<measure>], {', '.join(ACQUISITION)}"
    )


def _name(kind: str, measure: str | None, method: str = "spatial") -> str:
    """``uncertainty:least_confidence``, and `` + <method>`` when it is not today's default."""
    name = kind if measure is None else f"{kind}:{measure}"
    return name if method == DEFAULT_METHOD else f"{name} + {method}"


DEFAULT_METHOD = "spatial"
"""bench/unlabelled.py's name for today's training defaults (spatial augmentation only)."""


SCRATCH = "scratch "
"""A method name's prefix: every round trains a new model from scratch, as the job does under
TRAIN_SCRATCH_BELOW above the budget (training/jobs/run.py version_to_fine_tune), so a first
model's pre-training and pseudo-labels run each round; ``scratch spatial``: today's training."""


def _methods(names: list[str]) -> dict[str, dict]:
    """The TrainConfig fields of each ``--methods`` name (bench/unlabelled.py's METHODS, with
    or without the :data:`SCRATCH` prefix)."""
    from unlabelled import METHODS

    unknown = [n for n in names if n.removeprefix(SCRATCH) not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}: [{SCRATCH}]{', '.join(METHODS)}")
    return {n: METHODS[n.removeprefix(SCRATCH)] for n in names}


def _split_labelled(keys, y, holdout: str, train_config):
    """What the product trains and early-stops on, out of the labelled clips (indices into
    them): ``product`` splits as ``train_and_publish`` does (``held_out_split``: the
    TrainConfig's test and validation fractions, none under TRAIN_ALL_BELOW; its test part is
    for the product's quality gate, so nothing here trains on it), ``val`` holds out only the
    validation part, ``none`` trains on every label and monitors the training loss."""
    from training.learn.dataset import held_out_split, stable_split

    if holdout == "none":
        return np.arange(len(y)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if holdout == "val":
        train, gate, val = stable_split(keys, y, (0.0, train_config.val_fraction))
    else:
        train, gate, val = held_out_split(keys, y, train_config)
    return train, val, gate


def _acquire(model, pool, kind: str, more: int, seed: int, samples: int) -> list[int]:
    """The ``more`` clips of ``pool`` (ClipArrays) that the product's ACQUISITION=``kind``
    puts first: the same embeddings, MC dropout and choose_order as the refresh."""
    from training.learn.evaluate import predict_outputs
    from training.model.acquisition import bald, choose_order, mc_dropout_probs
    from training.model.embedding import with_embedding

    extended, head = with_embedding(model)
    out = predict_outputs(extended, pool)
    probs, h = out["classes"], out["embedding"]
    rng = np.random.default_rng([seed, 2])
    passes = mc_dropout_probs(h, head.kernel, head.bias, head.rate, samples, rng)
    order = choose_order(
        kind,
        probs.max(axis=1),
        bald_scores=bald(passes),
        embeddings=h,
        probs=probs,
        batch=more,
        seed=seed,
    )
    return order[:more]


def _run_one(job: dict) -> dict:
    """In a spawned process: one strategy, one seed, every round; returns the curve."""
    data, test, pool = _load_clips(job)
    from training.learn.config import TrainConfig
    from training.learn.evaluate import predict_arrays
    from training.model.uncertainty import most_uncertain

    labels = job["labels"]
    train_config = TrainConfig(
        epochs=job["epochs"], patience=job["patience"], seed=job["seed"], **job["fields"]
    )
    seed = job["seed"]

    rng = np.random.default_rng([seed, 0])
    labelled = [
        int(i)
        for c in range(len(labels))
        for i in rng.permutation(pool[data.y[pool] == c])[: job["seed_per_class"]]
    ]

    def score(model) -> dict:
        return {"accuracy": float((predict_arrays(model, test).argmax(1) == test.y).mean())}

    def choose(model, unlabelled, more: int) -> list[int]:
        if job["kind"] in ACQUISITION:
            rest = data.subset(unlabelled)
            chosen_at = _acquire(model, rest, job["kind"], more, seed, job["samples"])
            return [int(unlabelled[i]) for i in chosen_at]
        probs = predict_arrays(model, data.subset(unlabelled))
        return [int(unlabelled[i]) for i in most_uncertain(probs, more, job["measure"])]

    rounds = _annotate(
        job,
        data,
        pool,
        labelled,
        train_config,
        Learner(
            _trainer(data, train_config, labels),
            score,
            choose,
            per_class=lambda chosen: np.bincount(chosen.y, minlength=len(labels)).tolist(),
            meta={"labels": list(labels)},
        ),
    )
    return {"rounds": rounds}


def _load_clips(job: dict):
    """A spawned run's start: the repository importable, TensorFlow's ops deterministic
    (unless ``job["deterministic"]`` is false), and the job's clips keyed as the job keys
    Label Studio tasks (``task:<i>``, what the product's split hashes).

    Returns:
        ``(data, test, pool)``: every clip as ClipArrays (``frame_y`` when the file has it;
        no class when it has no ``y``, a timeline-only set), the held-out test clips, and
        the pool's indices into ``data``.
    """
    sys.path.insert(0, str(ROOT))
    import tensorflow as tf

    from training.learn.dataset import NO_CLASS, ClipArrays

    if job["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    arrays = np.load(job["data"])
    count = len(arrays["mask"])
    data = ClipArrays(
        arrays["frames"],
        arrays["mask"],
        arrays["y"] if "y" in arrays else np.full(count, NO_CLASS, np.int32),
        [f"clip{i}" for i in range(count)],
        [f"task:{i}" for i in range(count)],
        arrays.get("frame_y"),
    )
    return data, data.subset(arrays["test"]), arrays["pool"]


def _trainer(data, train_config, labels: list[str], timeline_labels: list[str] = ()):
    """Learner.train as the training job trains: the default model, ``fit`` on the round's
    training part with its validation part, from ``parent`` when there is one, else with the
    project's unlabelled clips for TrainConfig.pretrain (the job pre-trains on them before a
    first model only)."""
    from training.learn.fit import fit
    from training.model.config import ModelConfig
    from training.video.clip import SamplingConfig

    sampling = SamplingConfig(*data.frames.shape[1:4])
    model_config = ModelConfig()

    def train(chosen, tr, va, parent, unlabelled):
        return fit(
            chosen.subset(tr),
            chosen.subset(va) if len(va) else None,
            labels,
            sampling,
            model_config,
            train_config,
            parent=parent,
            timeline_labels=timeline_labels,
            unlabelled=data.subset(unlabelled) if parent is None else None,
        )

    return train


@dataclass(frozen=True)
class Learner:
    """What differs between the simulated sets (this one, bench/active_learning_timeline.py's),
    so that one loop, :func:`_annotate`, runs both and their figures stay comparable:

    - ``train(chosen, tr, va, parent, unlabelled)`` -> ``(model, history, init)``, as fit;
    - ``score(model)`` -> the round's test figures, ``"accuracy"`` among them;
    - ``choose(model, unlabelled, more)`` -> the ``more`` indices (into the data) to label;
    - ``per_class(chosen)`` -> the labelled counts per output, for the report;
    - ``meta``: a parent version's meta (its labels), for warm_start.
    """

    train: Callable
    score: Callable[..., dict]
    choose: Callable[..., list[int]]
    per_class: Callable[..., list[int]]
    meta: dict


def _annotate(
    job: dict, data, pool: np.ndarray, labelled: list[int], train_config, learner: Learner
) -> list[dict]:
    """Every round of one simulated annotator, as the product's loop runs: train on the
    labelled clips (the product's split, ``job["holdout"]``; from the last round's model
    unless ``job["init"]`` is ``scratch``, or while fewer labels than ``job["scratch_below"]``,
    as the job's TRAIN_SCRATCH_BELOW), score, then label up to ``job["k"]`` more, the
    next of a seeded random order (``random``) or ``learner.choose``'s, until
    ``job["budget"]`` (or ``job["target"]`` with ``job["stop_at_target"]``).

    Returns:
        One dict per round: its label count, ``learner.score``'s figures, the split's sizes,
        epochs, start, seconds and memory, and ``learner.per_class``.
    """
    import keras
    from support import rss_mb

    from training.versions.store import VersionInfo

    seed, k, budget = job["seed"], job["k"], job["budget"]
    random_order = (
        np.random.default_rng([seed, 1]).permutation(np.setdiff1d(pool, labelled)).tolist()
    )
    rounds, parent = [], None
    with tempfile.TemporaryDirectory() as tmp:
        while True:
            started = time.perf_counter()
            chosen = data.subset(np.asarray(labelled))
            tr, va, gate = _split_labelled(chosen.keys, chosen.y, job["holdout"], train_config)
            unlabelled = np.setdiff1d(pool, labelled)
            fine_tune = parent if len(labelled) >= job.get("scratch_below", 0) else None
            model, history, init = learner.train(chosen, tr, va, fine_tune, unlabelled)
            fit_s = time.perf_counter() - started
            scores = learner.score(model)
            more = min(k, budget - len(labelled), len(unlabelled))
            if job.get("stop_at_target") and scores["accuracy"] >= job["target"]:
                more = 0
            picked: list[int] = []
            if more > 0:
                if job["kind"] == "random":
                    picked, random_order = random_order[:more], random_order[more:]
                else:
                    picked = learner.choose(model, unlabelled, more)
            if job.get("init", "parent") == "parent" and more > 0:
                folder = Path(tmp) / f"r{len(rounds)}"
                folder.mkdir()
                model.save(folder / "model.keras")
                parent = VersionInfo("bench", folder.name, folder, learner.meta)
            del model
            keras.backend.clear_session()  # fresh layer names for warm_start, as a new job has
            gc.collect()
            rounds.append(
                {
                    "labels": len(labelled),
                    **scores,
                    "train": len(tr),
                    "val": len(va),
                    "gate": len(gate),
                    "epochs": len(history.get("loss", [])),
                    "init": init,
                    "fit_s": fit_s,
                    "round_s": time.perf_counter() - started,
                    "rss_mb": rss_mb(),
                    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "per_class": learner.per_class(chosen),
                }
            )
            if more <= 0:
                break
            labelled.extend(picked)
    return rounds


RETRIES = 2
"""Times a run is started again when its process dies (the OOM killer on a shared machine)."""


def _in_fresh_process(job: dict, ctx, run=_run_one) -> dict:
    """``run(job)`` (a module-level function, so that it pickles) in a spawned process of its
    own; started again if it is killed."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    for attempt in range(RETRIES + 1):
        try:
            with ProcessPoolExecutor(1, mp_context=ctx) as executor:
                return executor.submit(run, job).result()
        except BrokenProcessPool:
            if attempt == RETRIES:
                raise
            print(f"  (the process of {job['name']} seed {job['seed']} died; again)", flush=True)
    raise AssertionError("unreachable")


def _run_jobs(jobs: list[dict], ctx, processes: int, run=_run_one):
    """(job, ``run(job)``) as each ends: one at a time in a fresh process (started again if
    killed), or ``processes`` at a time, each in a process of its own (no retry)."""
    if processes <= 1:
        for job in jobs:
            yield job, _in_fresh_process(job, ctx, run)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(processes, mp_context=ctx, max_tasks_per_child=1) as executor:
        futures = {executor.submit(run, job): job for job in jobs}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _labels_to_reach(rounds: list[dict], target: float) -> int | None:
    """The first label count whose test accuracy is at least ``target`` (None: never)."""
    return next((r["labels"] for r in rounds if r["accuracy"] >= target), None)


def _mean_curve(runs: list[list[dict]]) -> tuple[list[int], list[float]]:
    """Mean accuracy at each label count, over the seeds whose run has that round; a run that
    stopped at the target counts with its last accuracy after it (it would not fall)."""
    counts = sorted({r["labels"] for run in runs for r in run})
    mean = []
    for n in counts:
        acc = [
            next((r["accuracy"] for r in run if r["labels"] == n), run[-1]["accuracy"])
            for run in runs
            if run[0]["labels"] <= n
        ]
        mean.append(float(np.mean(acc)))
    return counts, mean


def _plot(
    path: Path,
    curves: dict,
    target: float,
    title: str,
    *,
    xlabel: str = "labelled clips",
    ylabel: str = "held-out test accuracy",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for n, (name, runs) in enumerate(curves.items()):
        colour = f"C{n}"
        for run in runs:  # runs may end at different rounds (--stop-at-target)
            x = [r["labels"] for r in run]
            ax.plot(x, [r["accuracy"] for r in run], color=colour, alpha=0.25, linewidth=1)
        x, mean = _mean_curve(runs)
        ax.plot(
            x,
            mean,
            color=colour,
            linewidth=2.2,
            marker="o",
            markersize=3.5,
            label=f"{name} (mean of {len(runs)} seeds)",
        )
    ax.axhline(target, color="k", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--classes", default="motion4", help="synthetic classes: a number, a set or names"
    )
    parser.add_argument("--pool-per-class", type=int, default=75, help="unlabelled pool clips")
    parser.add_argument("--test-per-class", type=int, default=25, help="held-out test clips")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (clips, pool/test)")
    _add_run_arguments(parser)
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=["random", "uncertainty", "bald", "kcenter", "badge"],
        help="random | uncertainty | uncertainty:<measure> | bald | kcenter | badge",
    )
    parser.add_argument(
        "--mc-samples", type=int, default=20, help="ACQUISITION_MC_SAMPLES for bald"
    )
    parser.add_argument(
        "--measure",
        default="least_confidence",
        help="the measure of a plain 'uncertainty' strategy",
    )
    parser.add_argument(
        "--seed-per-class",
        type=int,
        default=2,
        help="labelled clips per class to start with (MIN_PER_LABEL is 2)",
    )
    parser.add_argument("--k", type=int, default=8, help="clips labelled per round")
    parser.add_argument("--budget", type=int, default=128, help="most labelled clips")
    parser.add_argument("--target", type=float, default=0.9, help="test accuracy to reach")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--init",
        default="parent",
        choices=("parent", "scratch"),
        help="fine-tune the last round's model (as the job does) or not",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[DEFAULT_METHOD],
        help="unlabelled-data methods crossed with each strategy (bench/unlabelled.py METHODS)",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        help="instead of every strategy x method: STRATEGY[+METHOD] each, e.g. random badge+order",
    )
    parser.add_argument(
        "--stop-at-target",
        action="store_true",
        help="end a run at its first round at or above --target",
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "active_learning.png")
    args = parser.parse_args()
    started = time.perf_counter()

    sys.path.insert(0, str(ROOT))
    import keras
    import tensorflow as tf

    from training.learn.dataset import decode_labelled, stratified_split
    from training.learn.labelled_files import read_manifest
    from training.video.clip import SamplingConfig
    from training.video.synth import generate_dataset, select_classes

    if args.runs:
        pairs = [(*spec.split("+", 1), DEFAULT_METHOD)[:2] for spec in args.runs]
    else:
        pairs = [(s, m) for m in args.methods for s in args.strategies]
    methods = _methods(sorted({m for _, m in pairs}))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB RAM, "
        f"python {platform.python_version()}, tensorflow {tf.__version__}, "
        f"keras {keras.__version__}, numpy {np.__version__}"
    )
    labels = select_classes(args.classes)
    per_class = args.pool_per_class + args.test_per_class
    sampling = SamplingConfig(frames=args.frames, height=args.size, width=args.size)
    ctx = mp.get_context("spawn")
    runs = [(*_parse_strategy(s, args.measure), m) for s, m in pairs]
    curves: dict[str, list[list[dict]]] = {_name(*r): [] for r in runs}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_dataset(Path(tmp), classes=labels, per_class=per_class, seed=args.seed)
        data, skipped = decode_labelled(read_manifest(manifest), labels, sampling)
        if skipped:
            raise SystemExit(f"unreadable synthetic clips: {skipped}")
        pool, test = stratified_split(data.y, (args.test_per_class / per_class,), seed=args.seed)
        path = Path(tmp) / "clips.npz"
        np.savez(path, frames=data.frames, mask=data.mask, y=data.y, pool=pool, test=test)
        print(
            f"data: {labels}, {per_class} clips each (data seed {args.seed}): pool {len(pool)}, "
            f"test {len(test)}; T={args.frames} at {args.size}x{args.size}; "
            f"{time.perf_counter() - started:.0f} s to generate and decode"
        )
        print(
            f"loop: seed set {args.seed_per_class}/class, +{args.k} a round up to "
            f"{args.budget} labels; seeds {args.seeds}; epochs <= {args.epochs} (patience "
            f"{args.patience}); holdout {args.holdout}; init {args.init}; target {args.target:g}\n",
            flush=True,
        )
        jobs = [
            {
                "data": str(path),
                "labels": labels,
                "kind": kind,
                "measure": measure,
                "name": _name(kind, measure, method),
                "fields": methods[method],
                "seed": seed,
                "seed_per_class": args.seed_per_class,
                **_loop_fields(args),
                "init": args.init,
                "scratch_below": args.budget + 1 if method.startswith(SCRATCH) else 0,
                "samples": args.mc_samples,
                "target": args.target,
                "stop_at_target": args.stop_at_target,
            }
            for seed in args.seeds
            for kind, measure, method in runs
        ]
        done = _collect(jobs, ctx, args.processes, started)
        for name in curves:
            curves[name] = [done[name, seed] for seed in args.seeds]
    _report(curves, args)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "curves": curves}, default=str))
        print(f"figures: {args.json}")
    title = (
        f"{len(labels)} synthetic classes, pool {len(pool)}, test {len(test)}, "
        f"T={args.frames} at {args.size}px; +{args.k}/round; holdout {args.holdout}, "
        f"init {args.init}; seeds {args.seeds}"
    )
    _plot(args.plot, curves, args.target, title)
    print(f"plot: {args.plot}")
    print(f"total {time.perf_counter() - started:.0f} s")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a run that every simulated set shares (bench/active_learning_timeline.py
    too): seeds, training length, holdout, determinism, processes and the figures' file."""
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="seed set, model init and random order, one run each",
    )
    parser.add_argument("--epochs", type=int, default=30, help="TRAIN_EPOCHS' default")
    parser.add_argument("--patience", type=int, default=10, help="TrainConfig's default")
    parser.add_argument(
        "--holdout",
        default="product",
        choices=HOLDOUTS,
        help="which labelled clips train (see _split_labelled)",
    )
    parser.add_argument(
        "--nondeterministic",
        action="store_true",
        help="skip tf.config.experimental.enable_op_determinism()",
    )
    parser.add_argument("--processes", type=int, default=1, help="runs at a time")
    parser.add_argument("--json", type=Path, help="also write every round's figures here")


def _loop_fields(args: argparse.Namespace) -> dict:
    """The fields of a job that every simulated set's loop (_annotate) reads from ``args``."""
    return {
        "k": args.k,
        "budget": args.budget,
        "epochs": args.epochs,
        "patience": args.patience,
        "holdout": args.holdout,
        "deterministic": not args.nondeterministic,
    }


def _collect(
    jobs: list[dict], ctx, processes: int, started: float, run=_run_one, what: str = "acc"
) -> dict[tuple[str, int], list[dict]]:
    """Every job's rounds by (name, seed), printing each run's curve (``what``) as it ends."""
    done: dict[tuple[str, int], list[dict]] = {}
    for job, result in _run_jobs(jobs, ctx, processes, run):
        rounds = done[job["name"], job["seed"]] = result["rounds"]
        accuracies = " ".join(f"{r['accuracy']:.2f}" for r in rounds)
        print(
            f"  {job['name']} seed {job['seed']}: {what} {accuracies}; "
            f"{sum(r['round_s'] for r in rounds):.0f} s, "
            f"{time.perf_counter() - started:.0f} s so far",
            flush=True,
        )
    return done


def _bound(values: list[int | None], budget: int) -> tuple[float, str]:
    """Mean labels needed, not-reached counted as the budget; ">" when that makes it a
    lower bound."""
    mean = float(np.mean([v if v is not None else budget for v in values]))
    return mean, ">" if any(v is None for v in values) else ""


def _before(a: int | None, b: int | None) -> bool:
    """Whether ``a`` labels is strictly fewer than ``b`` (None: not reached)."""
    return a is not None and (b is None or a < b)


def _ratio(mine: list[int | None], theirs: list[int | None], budget: int) -> str:
    """Mean labels needed over the reference's; ">"/"<": a bound, "?": both not reached."""
    (a, a_open), (b, b_open) = _bound(mine, budget), _bound(theirs, budget)
    mark = {("", ""): "", (">", ""): ">", ("", ">"): "<"}.get((a_open, b_open), "?")
    return f"{mark}{a / b:.2f}"


def _accuracy_at(
    curves: dict,
    names: list[str],
    width: int,
    counts: tuple[int, ...],
    key: str = "accuracy",
    what: str = "test accuracy",
) -> None:
    """Mean test accuracy (or another round figure, ``key``, called ``what``) and the seeds'
    spread at a few label counts, per strategy."""
    print(f"\n{what} at {', '.join(map(str, counts))} labels, mean +- std over seeds")
    print(f"{'strategy':{width}} " + " ".join(f"{f'@{n}':>13}" for n in counts))
    for name in names:
        cells = []
        for n in counts:
            acc = [r[key] for run in curves[name] for r in run if r["labels"] == n]
            text = f"{np.mean(acc):.3f} +- {np.std(acc):.3f}" if acc else "-"
            cells.append(f"{text:>13}")
        print(f"{name:{width}} " + " ".join(cells))


def _report(curves: dict[str, list[list[dict]]], args) -> None:
    names = list(curves)
    width = max(14, *(len(n) for n in names))
    counts = sorted({r["labels"] for runs in curves.values() for run in runs for r in run})
    budget = args.budget
    print(
        f"\ntest accuracy by labelled clips, mean over seeds {args.seeds} (min); "
        "[k/n]: only k of n seeds' runs had that round (the others reached the target)"
    )
    print(f"{'labels':>6} " + " ".join(f"{n:>{width}}" for n in names))
    for n in counts:
        cells = []
        for name in names:
            runs = curves[name]
            acc = [r["accuracy"] for run in runs for r in run if r["labels"] == n]
            text = f"{np.mean(acc):.3f} ({min(acc):.3f})" if acc else "-"
            if acc and len(acc) < len(runs):
                text += f" [{len(acc)}/{len(runs)}]"
            cells.append(f"{text:>{width}}")
        print(f"{n:6d} " + " ".join(cells))
    mean_acc = {
        # a run stopped at the target keeps its last accuracy after it (_mean_curve)
        name: float(np.mean(_mean_curve(curves[name])[1]))
        for name in names
    }
    print(f"{'all':>6} " + " ".join(f"{f'{mean_acc[n]:.3f}':>{width}}" for n in names))

    _accuracy_at(curves, names, width, (8, 16, 32))
    needed = {n: [_labels_to_reach(run, args.target) for run in curves[n]] for n in names}
    reference = "random" if "random" in names else None
    print(
        f"\nlabels to reach test accuracy {args.target:g} (the first round at or above it; "
        f">{budget}: not reached within the budget, counted as {budget} in the mean)"
    )
    print(
        f"{'strategy':{width}} "
        + " ".join(f"{'seed ' + str(s):>8}" for s in args.seeds)
        + f" {'mean':>7} {'mean acc':>8}"
        + (f" {'x random':>8} {'per seed x random':>24}" if reference else "")
    )
    for name in names:
        reach = needed[name]
        cells = [f"{r:8d}" if r is not None else f"{'>' + str(budget):>8}" for r in reach]
        mean, open_ = _bound(reach, budget)
        line = f"{name:{width}} " + " ".join(cells) + f" {open_ + f'{mean:.1f}':>7}"
        line += f" {mean_acc[name]:8.3f}"
        if reference and name != reference:
            per_seed = " ".join(
                _ratio([a], [b], budget) for a, b in zip(reach, needed[reference], strict=True)
            )
            line += f" {_ratio(reach, needed[reference], budget):>8} {per_seed:>24}"
        print(line)
    for name in names:
        if reference and name != reference:
            pairs = list(zip(needed[name], needed[reference], strict=True))
            fewer = sum(_before(a, b) for a, b in pairs)
            more = sum(_before(b, a) for a, b in pairs)
            print(
                f"{name} reached {args.target:g} with fewer labels than random on {fewer} of "
                f"{len(pairs)} seeds, with more on {more}"
            )

    print(
        f"\n{'strategy':{width}} {'fit s':>6} {'round s':>7} {'epochs':>6} {'trained':>8} "
        f"{'RSS MB first':>12} {'RSS MB last':>11} {'peak MB':>7} {'labels per class':>16}"
    )
    for name in names:
        runs = curves[name]
        rounds = [r for run in runs for r in run]
        per_class = np.mean([run[-1]["per_class"] for run in runs], axis=0)
        trained = f"{runs[0][0]['train']}-{max(r['train'] for r in rounds)}"
        print(
            f"{name:{width}} {np.mean([r['fit_s'] for r in rounds]):6.1f} "
            f"{np.mean([r['round_s'] for r in rounds]):7.1f} "
            f"{np.mean([r['epochs'] for r in rounds]):6.1f} {trained:>8} "
            f"{np.mean([run[0]['rss_mb'] for run in runs]):12.0f} "
            f"{np.mean([run[-1]['rss_mb'] for run in runs]):11.0f} "
            f"{max(r['peak_mb'] for r in rounds):7.0f} "
            f"{'/'.join(f'{c:.0f}' for c in per_class):>16}"
        )


if __name__ == "__main__":
    main()
