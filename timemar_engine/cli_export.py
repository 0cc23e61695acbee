"""`timemar-engine export`: the decoder as ONNX (checked in onnxruntime) or a TensorRT plan."""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from .cli_checks import UsageError, check_ckpt_arg, positive_int

DESCRIPTION = """\
Export a checkpoint's VQ-VAE decoder, the last step of sampling: latents f_hat (batch, Cz, T')
in, windows (batch, T, C) float32 out, in the --scale chosen (baked into the graph, with the
checkpoint's per-channel ranges for data units). Only the batch dimension is dynamic.

The export is checked in onnxruntime against PyTorch on latents from random token maps and on
latents of windows the model samples; the max abs error of each is printed, and an error above
1e-4 (times the largest channel bound for data units) fails the command (exit status 1).

--format tensorrt also writes the ONNX file next to --out (same name, .onnx) and builds a
TensorRT plan from it for batches 1..--max-batch, tied to this TensorRT version and GPU; built
plans are cached (in $XDG_CACHE_HOME/timemar-engine/tensorrt) by TensorRT version, GPU, batch
profile, precision, checkpoint hash and scale. It needs the tensorrt package and a CUDA GPU."""

EPILOG = """examples:
  timemar-engine export --out decoder.onnx                      # packaged default model
  timemar-engine export --ckpt model.pt --out dec.onnx --scale unit --force
  timemar-engine export --ckpt model.pt --format tensorrt --out dec.plan --max-batch 8192
"""


def add_parser(sub) -> None:
    """Register the export subcommand on the subparsers of the main parser."""
    x = sub.add_parser("export", help="export the decoder as ONNX or a TensorRT engine",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("--ckpt", help="checkpoint (default: the packaged default model)")
    x.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx",
                   help="onnx (default; needs pip install 'timemar-engine[export]') or tensorrt "
                        "(a serialized engine plan)")
    x.add_argument("--out", help="output path (default decoder.onnx, or decoder.plan for "
                                 "tensorrt)")
    x.add_argument("--scale", choices=("data", "unit", "model"), default="data",
                   help="units of the output windows: data (default), unit = [0, 1] per "
                        "channel, model = [-1, 1]")
    x.add_argument("--max-batch", type=positive_int,
                   help="tensorrt: the largest batch the plan accepts, also the batch its kernels "
                        "are tuned for (default 4096); the ONNX graph takes any batch")
    x.add_argument("--fp16", action="store_true",
                   help="tensorrt: let TensorRT 10.x use fp16 kernels (TensorRT 11 has no such "
                        "flag: it computes in the graph's float32)")
    x.add_argument("--force", action="store_true",
                   help="overwrite an existing --out (for tensorrt also the .onnx beside it)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _outputs(args) -> tuple[Path, Path]:
    """(ONNX path, final output) after checking the flags fit the format."""
    if args.format == "onnx":
        extra = [f for f, v in (("--max-batch", args.max_batch), ("--fp16", args.fp16)) if v]
        if extra:
            raise UsageError(f"{' and '.join(extra)} appl{'ies' if len(extra) == 1 else 'y'} to "
                             f"--format tensorrt only")
        out = Path(args.out or "decoder.onnx")
        return out, out
    out = Path(args.out or "decoder.plan")
    if out.suffix.lower() == ".onnx":
        raise UsageError(f"--out {out}: name the TensorRT plan (e.g. .plan); the ONNX file is "
                         f"written next to it")
    return out.with_suffix(".onnx"), out


def _report(what: str, errors: dict[str, float], sizes: dict[str, int], tol: float) -> bool:
    """Print the errors on one line; whether all are within tol."""
    parts = ", ".join(f"{e:.2e} on {k} latents ({sizes[k]} windows)" for k, e in errors.items())
    print(f"max abs error, {what} vs PyTorch: {parts}")
    worst = max(errors.values())
    if worst > tol:
        print(f"error: {what} differs from PyTorch by {worst:.3g} > {tol:.3g}", file=sys.stderr)
    return worst <= tol


def cmd_export(args) -> int:
    from . import export
    from .engine import Engine
    from .safe_io import check_writable

    onnx_path, out = _outputs(args)
    trt = args.format == "tensorrt"
    try:
        export.require_onnx()
        if trt:
            export.require_tensorrt()
    except export.MissingDependency as e:
        raise UsageError(str(e)) from None
    check_ckpt_arg(args.ckpt)
    for path in {onnx_path, out}:
        check_writable(path, args.force)
    engine = Engine.load(args.ckpt, device="cpu", backend="eager")
    model, scaler, scale = engine.model, engine.scaler, args.scale
    export.export_onnx(model, scaler, onnx_path, scale, overwrite=args.force)
    cfg = engine.cfg
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB): f_hat (batch, "
          f"{cfg.code_dim}, {cfg.latent_len}) -> windows (batch, {cfg.seq_len}, "
          f"{len(engine.channels)}), {scale} scale")
    latents = export.validation_latents(model)
    sizes = {k: len(v) for k, v in latents.items()}
    bound = max(1.0, float(abs(scaler.lo).max()), float(abs(scaler.hi).max()))
    tol = 1e-4 * (bound if scale == "data" else 1.0)
    ok = _report("onnxruntime", {k: export.validate_onnx(onnx_path, model, scaler, z, scale)
                                 for k, z in latents.items()}, sizes, tol)
    if not (trt and ok):
        return 0 if ok else 1
    try:
        export.build_tensorrt(onnx_path, out, checkpoint_sha256=file_sha256(engine.path),
                              scale=scale, max_batch=args.max_batch or 4096, fp16=args.fp16,
                              overwrite=args.force)
    except export.MissingDependency as e:
        raise UsageError(str(e)) from None
    except export.ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): TensorRT plan for batches "
          f"1..{args.max_batch or 4096}, {'fp16' if args.fp16 else 'fp32'}")
    errors = {k: export.validate_tensorrt(out, model, scaler, z, scale) for k, z in latents.items()}
    return 0 if _report("TensorRT", errors, sizes, tol * (100 if args.fp16 else 1)) else 1
