"""Runtime helpers every layer of the package may use: devices, AMP, wrapped models, the main
process, input checks and checkpoint files.

This module imports nothing of the package, so the modeling modules, the engine and the commands
can all depend on it without depending on each other.
"""
from __future__ import annotations

import logging
import os
import pickle
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

# ---------------------------------------------------------------------------- devices and AMP
AMP_MODES = ("auto", "off", "bf16", "fp16")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: the first CUDA GPU when there is one, else the CPU; otherwise the device
    named (``cpu``, ``cuda``, ``cuda:N``, ...), checked here so that a wrong name fails in one line
    instead of deep inside the first ``.to(device)``.

    Raises:
        ValueError: a name torch does not know, a CUDA device on a machine without CUDA, or a GPU
            index beyond the visible GPUs.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N (N = GPU index)"
        ) from None
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ValueError(f"device={device} was requested but CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ValueError(
            f"device={device} names GPU {dev.index}, but this machine has {count} visible GPU(s): "
            f"use cuda:0..cuda:{count - 1} (CUDA_VISIBLE_DEVICES renumbers them from 0)"
        )
    return dev


def amp_dtype(device: torch.device, amp: bool | str) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device``, or ``None`` for fp32.

    ``True``/``"auto"`` (callers resolve "auto" to on for CUDA): bf16 on GPUs that support it,
    fp16 otherwise; ``"bf16"``: bf16 (fp16 on a GPU without bf16), also on the CPU; ``"fp16"``:
    fp16, on CUDA only (``fit`` then scales the loss); ``False``/``"off"``: fp32.
    """
    if amp is False or amp == "off":
        return None
    if not (amp is True or amp in AMP_MODES):
        raise ValueError(f"amp={amp!r} is not an AMP mode; valid: auto, off (or false), bf16, fp16")
    if device.type == "cuda":
        if amp == "fp16" or not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if amp == "fp16":
        raise ValueError("amp='fp16' needs a CUDA device (fp16 with loss scaling); use amp='bf16' on the CPU")
    return torch.bfloat16 if amp == "bf16" else None


def check_compile(compile: bool | str) -> None:
    """Raise ``ValueError`` (one line) when ``compile`` names a backend ``torch.compile`` does not know;
    torch itself would say so only at the first training step, in a traceback."""
    if isinstance(compile, str):
        import torch._dynamo

        if compile not in torch._dynamo.list_backends(exclude_tags=()):
            common = ", ".join(["eager", *torch._dynamo.list_backends()])
            raise ValueError(f"compile={compile!r} is not a torch.compile backend; e.g. {common}")


def autocast_context(device: torch.device, amp: bool | str) -> Any:
    """bf16 autocast on GPUs that support it, fp16 otherwise; off on the CPU unless asked."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------- processes, models
def is_main_process() -> bool:
    """True outside ``torch.distributed`` and on its rank 0."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap_model(model: nn.Module) -> Any:
    """The module that holds the weights under ``DistributedDataParallel``, ``DataParallel`` and
    ``torch.compile`` wrappers (in any nesting): its config, state dict and methods are the model's.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = model.module
        else:
            inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def on_terminal() -> bool:
    """Whether progress bars fit the output: stderr (where tqdm draws) is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------- progress of long loops
T = TypeVar("T")

#: Seconds between two plain progress lines when stderr is not a terminal.
PROGRESS_INTERVAL = 30.0


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of a long loop: a tqdm bar when stderr is a terminal, else plain lines.

    The rule of the training loop, for every other long loop (extraction, re-ranking, image
    checks): files that stdout/stderr are redirected to (nohup, SLURM, ``> log``) get whole lines
    on the ``hrnet_pyg`` logger, never ``\\r`` fragments or block characters. A plain line comes at
    most every ``interval`` seconds, and a last one when such a loop ends; a loop that ends within
    the first interval prints nothing. Only the main process of a distributed run shows progress.

    Args:
        total: the number of units the loop will count, when known.
        desc: what the loop does, the start of every line (e.g. ``"extract"``).
        show: ``False`` shows nothing (``--no-progress``). (default: ``True``)
        unit: the name of one unit. (default: ``"it"``)
        interval: seconds between two plain lines. (default: :data:`PROGRESS_INTERVAL`)
        leave: keep the finished bar on the terminal. (default: ``False``)
    """

    def __init__(
        self, total: int | None, desc: str, *, show: bool = True, unit: str = "it",
        interval: float | None = None, leave: bool = False,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = PROGRESS_INTERVAL if interval is None else float(interval)
        self.n = 0
        self.bar: Any = None
        show = show and is_main_process()
        self.plain = show and not on_terminal()
        if show and not self.plain:
            # tqdm.std, not tqdm.auto: outside notebooks tqdm.auto is the asyncio variant, whose
            # constructor calls iter() on what it wraps (a loader would start its workers twice).
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
        self.t0 = self.last = time.perf_counter()
        self.printed = False

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.plain:
            now = time.perf_counter()
            if now - self.last >= self.interval:
                self.last = now
                self._line(now, done=False)

    def _line(self, now: float, done: bool) -> None:
        elapsed = now - self.t0
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        if done:
            text = f"{self.desc}: {count} {self.unit} in {_hms(elapsed)}"
        else:
            rate = self.n / max(elapsed, 1e-9)
            text = f"{self.desc}: {count} {self.unit} ({rate:.1f} {self.unit}/s"
            if self.total is not None and self.n:
                text += f", eta {_hms(elapsed / self.n * (self.total - self.n))}"
            text += ")"
        logging.getLogger("hrnet_pyg").info(text)
        self.printed = True

    def close(self, completed: bool = True) -> None:
        """End the bar; in plain mode a last line when lines were printed and the loop ended
        normally (``completed``)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.plain and self.printed and completed:
            self._line(time.perf_counter(), done=True)
        self.plain = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(completed=exc_type is None)


def progress(
    iterable: Iterable[T], desc: str, *, total: int | None = None, show: bool = True, unit: str = "it",
    interval: float | None = None, leave: bool = False,
) -> Iterator[T]:
    """The items of ``iterable``, counted by a :class:`Progress` (``total``: ``len(iterable)``
    when it has one). ``iterable`` is iterated once, lazily."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    bar = Progress(total, desc, show=show, unit=unit, interval=interval, leave=leave)
    completed = False
    try:
        for item in iterable:
            yield item
            bar.update(1)
        completed = True
    finally:
        bar.close(completed=completed)


def check_features(
    x: Any, channels: int | None = None, where: str | None = None, name: str = "x", dims: Iterable[int] = (2,),
) -> None:
    """One line naming ``name`` (and ``where``) unless ``x`` is a tensor of ``dims`` dimensions whose
    last one has ``channels`` entries (any number when ``channels`` is ``None``)."""
    dims = tuple(dims)
    if isinstance(x, Tensor) and x.dim() in dims and (channels is None or x.size(-1) == channels):
        return
    shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
    prefix = f"{where}: " if where else ""
    if channels is None and dims == (2,):
        raise ValueError(f"{prefix}{name} must have shape (N, d), got {shape}")
    want = " or ".join(f"{d}-D" for d in dims)
    what = f" with {channels} channels" if channels is not None else ""
    raise ValueError(f"{prefix}{name} must be a {want} tensor{what}, got {shape}")


# ---------------------------------------------------------------------------- checkpoint files
CHECKPOINT_KIND = "hrnet_pyg.checkpoint"  # the "kind" entry of every checkpoint this package writes
CHECKPOINT_FORMAT_VERSION = 1


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """``write(fh)`` into a temporary file in ``path``'s folder, then rename: never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, newline=None if "b" in mode else "") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give it the mode open() would (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a torn file."""
    atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def torch_load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` without torch's "Detected pickle protocol N"
    warning: it asks the user to file an issue with PyTorch, and a file that fails to load gets
    one line of its own from the caller (:func:`unreadable_reason`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its format version."""
    path = Path(path)
    if path.is_dir():
        hint = " (did you mean its last.pth?)" if (path / "last.pth").is_file() else ""
        raise ValueError(f"checkpoint {path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch_load_weights(path, map_location=map_location)
    except Exception as exc:
        # torch's message carries internals and advice to load with weights_only=False, which
        # would let the file run code; name the file and the reason instead.
        raise ValueError(f"checkpoint {path} could not be read: {unreadable_reason(path, exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        raise ValueError(
            f"{path} is not an hrnet_pyg checkpoint (no 'kind': '{CHECKPOINT_KIND}' entry); "
            "for backbone weights pass it as HRNetConfig(pretrained=path) instead"
        )
    version = ckpt.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        newer = isinstance(version, int) and version > CHECKPOINT_FORMAT_VERSION
        advice = (
            "upgrade hrnet_pyg to read it" if newer
            else "load it with the hrnet_pyg release that wrote it and save it again with this one"
        )
        raise ValueError(
            f"checkpoint {path} has format version {version}, this hrnet_pyg reads version "
            f"{CHECKPOINT_FORMAT_VERSION}; {advice}"
        )
    return ckpt


def unreadable_reason(path: str | Path, exc: Exception, kind: str = "checkpoints") -> str:
    """Why ``torch.load(path, weights_only=True)`` failed with ``exc``, in words for the user.

    Never torch's own text for a refused pickle: it advises retrying with ``weights_only=False``,
    which would let the file run code. ``kind`` names what is loaded (for the message).
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            head = fh.read(2)
        if not head or head[:1] != b"\x80":  # neither torch's zip format nor a pickle
            return "it is not a PyTorch checkpoint (truncated, or another kind of file)"
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc).lower():
        return (
            "it holds Python objects other than tensors and plain containers, which are never "
            f"unpickled (hrnet_pyg loads {kind} with weights_only=True)"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"it is damaged or not a PyTorch checkpoint ({type(exc).__name__}{': ' + first if first else ''})"


__all__ = [
    "AMP_MODES",
    "CHECKPOINT_FORMAT_VERSION",
    "CHECKPOINT_KIND",
    "PROGRESS_INTERVAL",
    "Progress",
    "amp_dtype",
    "atomic_save",
    "atomic_write",
    "autocast_context",
    "check_compile",
    "check_features",
    "is_main_process",
    "load_checkpoint",
    "on_terminal",
    "progress",
    "resolve_device",
    "torch_load_weights",
    "unreadable_reason",
    "unwrap_model",
]
