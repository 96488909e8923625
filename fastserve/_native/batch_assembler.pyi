"""Batch assembly without the GIL (csrc/batch_assembler.pyx); fastserve.batching.reference is its twin."""
import numpy as np

def gather_rows(arrays: list[np.ndarray], out: np.ndarray, padded_rows: int) -> int:
    """Copy each array's rows into out[0:total] and repeat row 0 up to padded_rows; returns total.
    The arrays share out's dtype and non-batch shape; out is C-contiguous, not of objects."""

def gather_padded(arrays: list[np.ndarray], out: np.ndarray, padded_rows: int) -> int:
    """As gather_rows for arrays whose non-batch dimensions differ: each one's rows go to the
    top-left corner of out, zero-filled; returns the rows copied."""
