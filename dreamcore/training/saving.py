"""Saves that do not stop training: a snapshot on the host now, the files written by a thread.

A save copies what it writes off the GPU (the only part training waits for), then a writer thread serialises
and writes the files, atomically as every write here is, one after another. A save's writes (its state and its
checkpoint) are queued together; the next save waits for them before it copies anything, so at most one save is
in flight. What a finished save reports (its events) is handed back to the training thread, which
emits it, so callbacks always run on the thread that called ``train()``. A failed write is raised in the
training thread at the next save, poll or finish, never dropped.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch


def map_leaves(value: Any, function: Callable[[Any], Any]) -> Any:
    """``value`` in the same nesting of dicts, lists and tuples, each leaf (a tensor, a number, a string...)
    replaced by ``function(leaf)``; leaves are visited in order."""
    if isinstance(value, dict):
        return {key: map_leaves(item, function) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_leaves(item, function) for item in value)
    return function(value)


def host_copy(value: Any) -> Any:
    """``value`` with every tensor copied to the host (a copy even when it is there already: training updates
    its tensors in place), in the same nesting of dicts, lists and tuples."""
    return map_leaves(value, _copied_to_host)


def _copied_to_host(leaf: Any) -> Any:
    return leaf.detach().to("cpu", copy=True) if isinstance(leaf, torch.Tensor) else leaf


# Page-locked staging only where it leaves this much host memory free beside it (the WebUI, the OS, the writer's
# own fp16 copies of a checkpoint).
STAGING_HEADROOM_BYTES = 4 * 2**30
_ALIGNMENT = 64  # bytes; every dtype's views into one flat buffer start aligned


class HostStaging:
    """Where a save's copies to the host go, one buffer per kind of save ("state", "checkpoint").

    With CUDA and host memory to spare, the buffer is one flat block of ordinary memory registered as page-locked
    (cudaHostRegister through torch.cuda.cudart(), so it is released when training ends, which torch's own pinned
    allocator would not do until the process exits), made at the first save and reused by the next ones: every
    copy is queued at the bus's full speed and waited for once. Without it each tensor is copied on its own into
    fresh pageable memory: one blocking copy and a page fault per 4 KiB (BENCHMARKS.md, run GV2: a save held
    training up for 17.9 s, these copies a part of it). The values are the same either way; the caller waits for
    the last save's files before the next save's copies (run.py), so a buffer is never overwritten while read.
    """

    def __init__(self, log: Callable[[str, str], None]) -> None:
        self._log = log
        self._buffers: dict[str, tuple[tuple, torch.Tensor]] = {}  # kind -> (layout, registered block)
        self._said_why_not = False

    def copier(self, kind: str) -> Callable[[Any], Any]:
        """A function copying a nested structure's tensors to the host (as ``host_copy``) through ``kind``'s
        buffer."""
        return lambda value: self.copy(kind, value)

    def copy(self, kind: str, value: Any) -> Any:
        """``value`` with every tensor copied to the host, in the same nesting (``host_copy``'s contract)."""
        leaves = _cuda_tensors(value)
        block = self._block(kind, leaves) if leaves else None
        if block is None:
            return host_copy(value)
        views: list[torch.Tensor] = []
        offset = 0
        for tensor in leaves:  # each occurrence its own place, as host_copy gives each its own copy
            size = tensor.numel() * tensor.element_size()
            view = block[offset:offset + size].view(tensor.dtype).view(tensor.shape)
            view.copy_(tensor, non_blocking=True)
            views.append(view)
            offset = _aligned(offset + size)
        torch.cuda.current_stream(leaves[0].device).synchronize()
        in_order = iter(views)  # the views replace the CUDA tensors in the order _cuda_tensors found them
        return map_leaves(value, lambda leaf: next(in_order) if _is_cuda_tensor(leaf) else _copied_to_host(leaf))

    def release(self) -> None:
        """Unregister and free every buffer (training has ended and its writes are done)."""
        for kind, (_, block) in self._buffers.items():
            error = _unregister(block)
            if error:  # said, not raised: this runs after training, also while its own error propagates
                self._log(f"CUDA could not release the page-locked {kind} save buffer (error {error}); its "
                          f"{block.numel() / 2**30:.1f} GiB stay locked until this process ends.", "warning")
        self._buffers.clear()

    def _block(self, kind: str, leaves: list[torch.Tensor]) -> torch.Tensor | None:
        layout = tuple((tuple(t.shape), t.dtype) for t in leaves)
        held = self._buffers.get(kind)
        if held is not None and held[0] == layout:
            return held[1]
        if held is not None:  # the layout changed (a LoRA run's state, say): a buffer that fits it
            error = _unregister(held[1])
            if error:
                raise RuntimeError(f"CUDA could not release a page-locked save buffer (error {error})")
            del self._buffers[kind]
        total = sum(_aligned(t.numel() * t.element_size()) for t in leaves)
        why_not = _why_not_page_locked(total)
        block = None
        if why_not is None:
            block = torch.empty(total, dtype=torch.uint8)
            error = torch.cuda.cudart().cudaHostRegister(block.data_ptr(), total, 0)
            if int(error) != 0:
                why_not, block = f"CUDA could not page-lock {total / 2**30:.1f} GiB (error {int(error)})", None
        if block is None:
            if not self._said_why_not:
                self._log(f"saves copy to ordinary host memory, tensor by tensor (slower: training waits longer "
                          f"at each save): {why_not}.", "info")
                self._said_why_not = True
            return None
        self._buffers[kind] = (layout, block)
        return block


def _why_not_page_locked(total: int) -> str | None:
    import psutil

    available = psutil.virtual_memory().available
    if available < total + STAGING_HEADROOM_BYTES:
        return (f"{total / 2**30:.1f} GiB to page-lock would leave less than "
                f"{STAGING_HEADROOM_BYTES / 2**30:.0f} GiB of the {available / 2**30:.1f} GiB of host memory free")
    return None


def _unregister(block: torch.Tensor) -> int:
    """cudaHostUnregister's error code (0: released)."""
    return int(torch.cuda.cudart().cudaHostUnregister(block.data_ptr()))


def _aligned(size: int) -> int:
    return (size + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT


def _is_cuda_tensor(leaf: Any) -> bool:
    return isinstance(leaf, torch.Tensor) and leaf.is_cuda


def _cuda_tensors(value: Any) -> list[torch.Tensor]:
    """Every CUDA tensor in ``value``, each occurrence once, in ``map_leaves``' order."""
    found: list[torch.Tensor] = []
    map_leaves(value, lambda leaf: found.append(leaf) if _is_cuda_tensor(leaf) else None)
    return found


class BackgroundWriter:
    """One writer for slow file writes, run one after another in the order submitted; ``submit`` a write,
    ``poll`` for what finished. A save submits all its writes at once (its state and its checkpoint), so
    training waits for none of them; the caller ``wait``s before the next save's host copies, so at most one
    save's copies are held at a time."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None  # the last write submitted; it runs after the one before
        self._finished: list[Callable[[], None]] = []  # what each finished write reports, run by the caller
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def submit(self, write: Callable[[], Any], report: Callable[[], None] | None = None) -> None:
        """Run ``write`` on a writer thread once every write submitted before it is done; ``report`` (what to say
        when it has finished) is called by ``poll`` on the training thread."""
        self.poll()
        before = self._thread

        def run() -> None:
            if before is not None:
                before.join()
            with self._lock:
                if self._error is not None:  # a write before this one failed: this save is not complete
                    return
            try:
                write()
            except BaseException as error:  # handed to the training thread, which raises it
                with self._lock:
                    self._error = error
                return
            if report is not None:
                with self._lock:
                    self._finished.append(report)

        self._thread = threading.Thread(target=run, name="dreamcore-save", daemon=False)
        self._thread.start()

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poll(self) -> None:
        """Report the writes that finished; raise the error of one that failed."""
        with self._lock:
            finished, self._finished = self._finished, []
            error, self._error = self._error, None
        for report in finished:
            report()
        if error is not None:
            raise error

    def wait(self) -> None:
        """Wait for the write in flight (if any), then ``poll``."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.poll()

    def finish_after_error(self, log: Callable[[str, str], None]) -> None:
        """Training failed: let the write in flight complete its files; its own failure is logged, since the
        training error is the one raised."""
        try:
            self.wait()
        except Exception as error:  # the training error propagates; this one must still be seen
            log(f"a checkpoint or state being written when training failed could not be written: "
                f"{type(error).__name__}: {error}", "error")
