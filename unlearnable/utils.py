"""Small shared helpers: atomic writes, hashing, run metadata, seeding, precision."""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # torch is imported where used, so data/config checks run before the heavy imports
    import torch

PACKAGES = ("unlearnable", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors")


def cache_dir() -> Path:
    """Where converted models, generated data and locks are kept (``$UNLEARNABLE_CACHE``, default
    ``~/.cache/unlearnable``)."""
    root = os.environ.get("UNLEARNABLE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "unlearnable"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def log(msg: str) -> None:
    """Progress messages go to stderr so stdout stays parseable."""
    print(f"[unlearnable] {msg}", file=sys.stderr, flush=True)


class Timings:
    """Wall-clock seconds per named stage, summed over repeats: ``with timings("align"): ...``.

    Stages may nest (a stage's time then also counts in its parent's), so a breakdown names leaves and totals
    separately; ``as_dict`` keeps first-use order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        import time

        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.seconds.items()}


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_text(json.dumps(obj, sort_keys=True, default=str))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.cache
def git_hash() -> str | None:
    """The checkout's HEAD when first asked in this process (experiments ask when they start: a commit made while
    a long run goes on is not the code that ran)."""
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return res.stdout.strip() or None
    except Exception:  # noqa: BLE001 - metadata only
        return None


def run_metadata() -> dict[str, Any]:
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "git_hash": git_hash(),
        "platform": platform.platform(),
        "device": describe_device(),
    }


def resources() -> dict[str, Any]:
    """Peak memory of this process so far: resident (the OS's high-water mark) and, on CUDA, the most the
    allocator held."""
    import resource
    import sys

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    out: dict[str, Any] = {"peak_rss_gb": round(rss / (1 << 30 if sys.platform == "darwin" else 1 << 20), 3)}
    if torch.cuda.is_available():
        out["cuda_max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated() / (1 << 30), 3)
    return out


def release_memory() -> None:
    """Hand memory freed by a finished stage back to the system. The C allocator keeps the freed blocks of a stage's
    transient tensors (glibc's heap holds most of them), so without this the resident memory of a long experiment
    only grows and its peak is that of all stages together rather than of the largest one. Cheap (milliseconds);
    a no-op where the C library has no ``malloc_trim``."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


#: allocations from this size up get pages of their own, handed back to the system when freed
HEAP_LIMIT_BYTES = 4 << 20
#: glibc's mallopt parameter for that size
_M_MMAP_THRESHOLD = -3


def keep_large_blocks_out_of_the_heap() -> None:
    """Give large tensors (>= :data:`HEAP_LIMIT_BYTES`) pages of their own. glibc raises its threshold for that to
    32 MB as large blocks are freed, after which a training step's activations and logits are carved from the heap,
    where freed blocks stay resident: the step's peak then adds to every earlier one's leftovers. Fixing the
    threshold keeps them out at no measured cost in step time (benchmarks/RESULTS.md). Process-wide; the
    experiments call it when they start; a no-op where the C library is not glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, HEAP_LIMIT_BYTES)


@functools.cache
def _libc():
    """The C library if it has ``malloc_trim`` (glibc), found on first use: not at import, where finding it would
    cost every command's start-up a subprocess."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def describe_device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def cpu_bf16_supported() -> bool:
    """True where this CPU has native bf16 matmul (e.g. avx512_bf16 / AMX); without it bf16 is *slower*."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001
        return False


#: the precisions every ``precision`` option takes
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """'auto' -> 'bf16' where the device does bf16 fast, else 'fp32'."""
    if precision not in PRECISIONS:
        from .errors import UnlearnableError

        raise UnlearnableError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if precision != "auto":
        return precision
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_supported() else "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: str | torch.device) -> Iterator[None]:
    import torch

    dev = torch.device(device)
    if precision == "bf16":
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def set_seed(seed: int) -> None:
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)


# ------------------------------------------------------------- several processes (accelerate launch / torchrun)


def launch_device() -> str | None:
    """Under a multi-process launch with GPUs, each rank's own GPU (cuda:LOCAL_RANK); one process on a machine with
    a GPU, the first visible GPU; otherwise None (CPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def is_main_process() -> bool:
    """Only rank 0 of a multi-process launch writes outputs (and prints the result line)."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------------------------------- atomic files


def ensure_free_space(path: str | os.PathLike, need_bytes: int, what: str = "the output") -> None:
    """Refuse, before the work, to write ``need_bytes`` where the disk does not have them."""
    from .errors import UnlearnableError

    probe = Path(path).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise UnlearnableError(f"not enough free space for {what} at {path}: it needs about {need_bytes / 2**20:,.0f} "
                               f"MiB and {free / 2**20:,.0f} MiB are free; free some space or choose another --out")


def model_nbytes(model) -> int:
    """Bytes of a model's weights as saved (tied tensors once)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_savefig(fig, path: str | os.PathLike, **kwargs: Any) -> None:
    """``fig.savefig`` to a temporary sibling, then rename: a plot is either whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    If the body raises, the temporary folder is removed and ``path`` is untouched: a folder either
    holds a complete artifact or does not exist. A write that fails for want of space or permission (from Python,
    or from a library that reports the OS error only in its message, such as safetensors) is raised as the
    one-line :func:`unlearnable.errors.write_error`.
    """
    path = Path(path)
    try:
        with _replacing_dir(path, overwrite) as tmp:
            yield tmp
    except Exception as exc:
        from .errors import write_error

        error = write_error(exc, path)
        if error is None:
            raise
        raise error from None


@contextlib.contextmanager
def _replacing_dir(path: Path, overwrite: bool) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                from .errors import UnlearnableError

                raise UnlearnableError(f"{path} already exists; pass --overwrite to replace it")
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
