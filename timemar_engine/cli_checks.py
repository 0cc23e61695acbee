"""Argument types and input checks of the command line: each bad input becomes one line saying
what is wrong, raised before anything expensive starts."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np


class UsageError(Exception):
    """A command line that cannot be carried out; printed as one error line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with a usage error printed as one line (exit status 2, as argparse's): the
    problem, then where to read more, instead of the usage block and the message."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(low: int, what: str = "an integer"):
    """An argparse type: an integer >= low."""
    return lambda text: _number(text, int, lambda v: v >= low, f"{what} >= {low}")


def _number(text: str, cast, ok, what: str):
    """text as cast(text) when ok(value), else an argparse error saying it must be `what`."""
    try:
        v = cast(text)
    except ValueError:
        v = None
    if v is None or not ok(v):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return v


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def positive_float(text: str) -> float:
    """A finite number > 0 (temperatures, learning rates, minutes)."""
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def probability(text: str) -> float:
    """A number in (0, 1] (top-p)."""
    return _number(text, float, lambda v: 0 < v <= 1, "a number in (0, 1]")  # NaN fails too


def holdout_fraction(text: str) -> float:
    """A number in [0, 0.5] (0: hold nothing out)."""
    return _number(text, float, lambda v: 0 <= v <= 0.5, "a number in [0, 0.5]")


def seed_value(text: str) -> int:
    """An integer torch can seed with: [-2**63, 2**64)."""
    return _number(text, int, lambda v: -2 ** 63 <= v < 2 ** 64,
                   "an integer in [-2**63, 2**64)")


def device_name(text: str) -> str:
    """auto, cpu, cuda or cuda:N that exists here; checked when parsing, before any work."""
    from .backends import resolve_device

    try:
        resolve_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def iterations_item(text: str) -> tuple[str, int]:
    """METRIC=N for --iterations: a metric with a training length and a positive integer."""
    from .metrics.report import DEFAULT_ITERATIONS

    name, eq, value = text.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(f"expects METRIC=N, got {text!r}")
    if name not in DEFAULT_ITERATIONS:
        raise argparse.ArgumentTypeError(f"{name!r} has no iterations setting; choose from "
                                         f"{', '.join(DEFAULT_ITERATIONS)}")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{name} iterations must be a positive integer, got "
                                         f"{value!r}")
    return name, n


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def check_ckpt_arg(path: str | None) -> None:
    """A --ckpt that is not a file, said before anything is loaded (None: the packaged model)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{p}: is a folder, not a checkpoint file")
    if not p.is_file():
        raise UsageError(f"{p}: no such checkpoint file")


_EXTENSIONS = {"npy": "npy", "csv": "csv", "parquet": "parquet", "pq": "parquet"}


def output_format(out: Path, fmt: str | None) -> str:
    """--format, else from the --out extension (else npy); a known extension that contradicts
    --format is an error rather than, say, CSV text in a file named .npy."""
    from .writers import guess_format

    ext = out.suffix.lower().lstrip(".")
    if fmt and ext in _EXTENSIONS and _EXTENSIONS[ext] != fmt:
        raise UsageError(f"--out {out} has the extension .{ext} but --format is {fmt}; "
                         f"make them agree")
    return fmt or guess_format(out)


# the smallest (windows, length T, channels) each metric can score
_METRIC_NEEDS = {"discriminative": (2, 1, 1), "predictive": (1, 2, 2), "context_fid": (2, 2, 1),
                 "correlational": (1, 1, 1)}


def check_metric_shapes(metrics, **shapes) -> None:
    """Every selected metric can run on these (n, T, C) shapes (None: not known yet), said now
    rather than after the metrics before it have trained."""
    for metric in metrics:
        for name, shape in shapes.items():
            for have, need, what in zip(shape, _METRIC_NEEDS[metric],
                                        ("windows", "time steps per window", "channels")):
                if have is not None and have < need:
                    raise UsageError(f"the {metric} metric needs at least {need} {what}; "
                                     f"{name} has {have}")


def _npy_header(flag: str, p: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy file's header (no data read, nothing unpickled), checking
    that the file holds all the data the header promises."""
    from numpy.lib import format as npf

    readers = {(1, 0): npf.read_array_header_1_0, (2, 0): npf.read_array_header_2_0}
    try:
        with open(p, "rb") as fh:
            version = npf.read_magic(fh)
            read = readers.get(version, lambda f: npf._read_array_header(f, version))
            shape, _, dtype = read(fh)
            offset = fh.tell()
    except Exception as e:  # a damaged header fails in numpy's parser with several types
        raise UsageError(f"{flag} {p}: not a readable .npy file ({_one_line(e)})") from None
    if dtype.hasobject:
        raise UsageError(f"{flag} {p}: the array holds Python objects (dtype {dtype}); they are "
                         f"not unpickled (that can run code): save an array of numbers")
    if dtype.kind not in "biuf":
        raise UsageError(f"{flag} {p}: expected numbers, got an array of dtype {dtype}")
    need, have = offset + math.prod(shape) * dtype.itemsize, p.stat().st_size
    if have < need:
        raise UsageError(f"{flag} {p}: truncated: the header promises {need:,} bytes, the file "
                         f"has {have:,}")
    return shape, dtype


def read_windows(flag: str, path: str) -> np.ndarray:
    """The (n, T, C) windows of a --real / --fake .npy file, or a UsageError naming the flag,
    the file and the problem (checked from the header before the data are read)."""
    from .data import DataError
    from .evaluation import load_windows

    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {p}: is a folder, not a .npy file")
    if not p.is_file():
        raise UsageError(f"{flag} {p}: no such file")
    with open(p, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise UsageError(f"{flag} {p}: not a .npy file (save the (n, T, C) windows with "
                         f"numpy.save)")
    shape, _ = _npy_header(flag, p)
    if len(shape) != 3:
        raise UsageError(f"{flag} {p}: expected (n, T, C) windows, got an array of shape {shape}")
    if 0 in shape:
        raise UsageError(f"{flag} {p}: the array is empty (shape {shape})")
    try:
        a = load_windows(p)
    except DataError as e:
        raise UsageError(f"{flag} {_one_line(e)}") from None
    except (ValueError, TypeError, OSError, EOFError) as e:
        raise UsageError(f"{flag} {p}: cannot read the array ({_one_line(e)})") from None
    bad = ~np.isfinite(a)
    if bad.any():
        raise UsageError(f"{flag} {p}: contains NaN or inf (first at index "
                         f"{tuple(int(i) for i in np.argwhere(bad)[0])})")
    return a


def check_plot_dependencies() -> None:
    import importlib.util

    missing = [m for m in ("matplotlib", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"--plot needs {' and '.join(missing)}, not installed here: "
                         f"pip install 'timemar-engine[eval]'")
