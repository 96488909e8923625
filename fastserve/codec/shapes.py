"""Tensor shapes as requests state them, checked before anything is allocated for them.

Every decoder reads a request's shape through `checked_shape` and counts its elements
with Python's integers (no overflow); a tensor whose values are implied (a TensorProto
with fewer values than elements, which TensorFlow fills) may not expand a request far
beyond its own size (`check_implied`).
"""
import math

from fastserve.errors import invalid_argument

MAX_RANK = 32  # TensorFlow crashes converting a string tensor of rank 33 or more; no model needs that many
IMPLIED_FACTOR = 1024  # implied elements: at most this many per value given ...
IMPLIED_FLOOR = 1 << 20  # ... or this many in all, whichever is more (unless max_tensor_elements allows more)
MAX_SPAN = (2**63 - 1) // 16  # numpy keeps an array's size in bytes (16 at most per element) below 2^63


def checked_shape(dims, name: str) -> tuple[int, ...]:
    """The shape as a tuple of non-negative ints of at most MAX_RANK dimensions. (A shape without a
    zero is checked by its element count, which the data given must match.)"""
    dims = list(dims)
    check_rank(len(dims), name)
    shape = tuple(int(d) for d in dims)
    if shape and min(shape) < 0:
        raise invalid_argument(f"input '{name}': shape {list(shape)} has a negative dimension")
    if 0 in shape:  # no elements, yet numpy refuses the shape when the others multiply beyond its limit
        span = math.prod(d for d in shape if d)
        if span > MAX_SPAN:
            raise invalid_argument(f"input '{name}': shape {list(shape)} is too large: its non-zero dimensions multiply to {span}, "
                                   f"above {MAX_SPAN}")
    return shape


def check_rank(rank: int, name: str) -> None:
    if rank > MAX_RANK:
        raise invalid_argument(f"input '{name}': rank {rank} is above the limit of {MAX_RANK} dimensions")


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def check_implied(count: int, given: int, shape: tuple[int, ...], name: str, max_elements: int = 0) -> None:
    """Refuse a tensor of `count` elements whose request gives only `given` values, when that
    expands it beyond IMPLIED_FACTOR x the values (at least IMPLIED_FLOOR elements), or beyond
    max_tensor_elements where the operator set a larger one."""
    allowed = max(given * IMPLIED_FACTOR, IMPLIED_FLOOR, max_elements)
    if count > allowed:
        raise invalid_argument(
            f"input '{name}': shape {list(shape)} has {count} elements but the request gives {given} values; "
            f"implied values (the last one repeated) may fill at most {allowed} elements (raise max_tensor_elements to allow more)"
        )
