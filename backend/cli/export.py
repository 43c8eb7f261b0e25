"""``videoloop export``: a version's model for use elsewhere, as a SavedModel (TF Serving) or a
LiteRT file (mobile, edge), with ``videoloop.json`` saying what goes in and what comes out.

Both take one clip per call (the signature publishing exports: training/model/litert_export.py
says why the batch is fixed). The parity figures of the files publishing made are in the
version's meta.json (``videoloop models show``); an export here converts again and is not
checked against Keras, since the version's test clips are not at hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.cli.common import quiet_tensorflow
from training.model.litert import FLOAT_FILE, QUANTIZATIONS, quantized_file
from training.settings import Settings

FORMATS = ("savedmodel", "litert")
DESCRIPTION_FILE = "videoloop.json"


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a version as a SavedModel or a LiteRT file")
    p.add_argument("--project", required=True)
    p.add_argument("--version", default=None, help="default: the project's current version")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument(
        "--quantize",
        choices=("none", *QUANTIZATIONS),
        default="none",
        help="litert only: float16 weights, or dynamic-range int8 weights",
    )
    p.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    quiet_tensorflow()
    from backend.protocol import normalize_project
    from training.versions.store import ModelStore

    if args.quantize != "none" and args.format != "litert":
        print("videoloop export: --quantize is for --format litert", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"videoloop export: {args.out} is not empty", file=sys.stderr)
        return 2
    store = ModelStore.from_settings(settings)
    project = normalize_project(args.project)
    info = store.get_version(project, args.version) if args.version else None
    info = info or store.get_current_info(project)
    if info is None:
        print(f"project {project} has no current version in {settings.model_dir}", file=sys.stderr)
        return 2
    written = _write(
        info, args.format, None if args.quantize == "none" else args.quantize, args.out
    )
    description = {
        "project": project,
        "version": info.version,
        "format": args.format,
        "file": written,
        "quantize": args.quantize,
        "inputs": {
            "frames": "(1, T, H, W, 3) uint8, T/H/W from sampling",
            "mask": "(1, T) bool, True for real frames",
        },
        "outputs": {"classes": info.meta["labels"], "timeline": info.meta.get("timeline_labels")},
        "sampling": info.meta["sampling"],
    }
    (args.out / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2))
    print(json.dumps({"out": str(args.out), "file": written, "version": info.version}))
    return 0


def _write(info, fmt: str, quantize: str | None, out: Path) -> str:
    """Convert the version's Keras model into ``out``; return the name written there."""
    import tempfile

    from training.model.build import load_keras_model
    from training.model.litert_export import convert, export_savedmodel
    from training.video.clip import SamplingConfig

    model = load_keras_model(info.model_path)
    sampling = SamplingConfig.from_dict(info.meta["sampling"])
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "savedmodel":
        export_savedmodel(model, sampling, out / "savedmodel")
        return "savedmodel"
    name = quantized_file(quantize) if quantize else FLOAT_FILE
    with tempfile.TemporaryDirectory(prefix="savedmodel-") as tmp:
        saved = export_savedmodel(model, sampling, Path(tmp) / "savedmodel")
        (out / name).write_bytes(convert(saved, quantize))
    return name
