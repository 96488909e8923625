"""Turns the rows of many tasks into one batch input per tensor, and back.

Each batch thread owns one BatchAssembler: its buffers (one per input) are reused
from batch to batch, so assembling a batch is a copy into memory that is already
there (csrc/batch_assembler.pyx, without the GIL). Outputs are handed back as
views of the batch output, never copies.
"""
import numpy as np

from fastserve._native import batch_assembler as native


class BatchAssembler:
    def __init__(self, pad_variable_length_inputs: bool):
        self._pad = pad_variable_length_inputs
        self._buffers: dict[str, np.ndarray] = {}

    def gather(self, key: str, parts: list[np.ndarray], padded_rows: int) -> np.ndarray:
        """One array of padded_rows rows: the parts' rows in order, then padding."""
        first = parts[0]
        if len(parts) == 1 and first.shape[0] == padded_rows:
            return first  # a batch of one task: nothing to copy
        inner = first.shape[1:]
        if self._pad:
            inner = tuple(max(p.shape[d] for p in parts) for d in range(1, first.ndim))
        if first.dtype.hasobject:  # strings: numpy copies the references
            return _gather_objects(parts, inner, padded_rows)
        out = self._buffer(key, first.dtype, inner, padded_rows)
        if self._pad and any(p.shape[1:] != inner for p in parts):
            native.gather_padded(parts, out, padded_rows)
        else:
            native.gather_rows(parts, out, padded_rows)
        return out[:padded_rows]

    def detach(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy any output that shares memory with a reused buffer (an identity-like
        model may return its input), so the next batch cannot overwrite a result."""
        buffers = self._buffers.values()
        return {
            k: v.copy() if any(np.may_share_memory(v, b) for b in buffers) else v
            for k, v in outputs.items()
        }

    def _buffer(self, key, dtype, inner, rows) -> np.ndarray:
        buf = self._buffers.get(key)
        if buf is None or buf.dtype != dtype or buf.shape[1:] != inner or buf.shape[0] < rows:
            buf = np.empty((rows, *inner), dtype)
            self._buffers[key] = buf
        return buf


def _gather_objects(parts, inner, padded_rows) -> np.ndarray:
    out = np.full((padded_rows, *inner), b"", dtype=object)
    row = 0
    for p in parts:
        corner = (slice(row, row + p.shape[0]), *(slice(0, d) for d in p.shape[1:]))
        out[corner] = p
        row += p.shape[0]
    if not any(p.shape[1:] != inner for p in parts) and row:
        out[row:] = out[0]  # like the native path: pad with row 0
    return out
