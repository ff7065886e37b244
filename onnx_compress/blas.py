"""One BLAS thread for the small dense problems of reconstruction and SVD.

OpenBLAS splits even a 150 x 150 solve over every core. On small machines the threads'
wake-ups and their contention with ONNX Runtime's own pool cost more than they bring:
on the project's 2-core machine the anchor's channel-pruning refits (D = 144 .. 1152
unknowns, 500 samples) ran 2.4x faster on one thread, small ones up to 12x. Problems
whose largest dimension passes `SMALL` keep the library's default threading.
"""
from __future__ import annotations

import contextlib
import threading

SMALL = 4096  # largest matrix dimension still run on one thread
_lock = threading.Lock()
_controller = None


def _get():
    global _controller
    with _lock:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            import scipy.linalg  # noqa: F401  (load scipy's BLAS too, so both are limited)

            _controller = ThreadpoolController()
        return _controller


@contextlib.contextmanager
def single_thread(size: int = 0):
    """Run the block on one BLAS thread when `size` (largest dimension) <= SMALL."""
    if size > SMALL:
        yield
        return
    with _get().limit(limits=1, user_api="blas"):
        yield
