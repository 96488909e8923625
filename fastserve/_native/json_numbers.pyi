"""TF Serving REST predict bodies of plain numbers, read straight into one array (csrc/json_numbers.pyx)."""
import numpy as np

def parse_numeric_request(body: bytes) -> tuple[str | None, str, str | None, np.ndarray] | None:
    """(signature name, "instances" | "inputs", input name, int64 or float64 array) of a body that is
    only such numbers; None for any other body (the general JSON path reads it)."""
