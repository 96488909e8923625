"""csrc/json_numbers.pyx against the general path (orjson, then numpy), which it must match bit for bit."""
import json
import random
import struct

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastserve._native.json_numbers import parse_numeric_request
from fastserve.codec.json_tensor import PredictBody, decode_request, loads
from fastserve.errors import ServingError
from fastserve_client.dtypes import DataType


def reference(body: bytes, key: str, name: str | None = None) -> np.ndarray:
    value = orjson.loads(body)[key]
    return np.asarray(value if name is None else value[name])


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()  # bit for bit: -0.0, rounding


def random_double(rng: random.Random) -> float:
    while True:
        x = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if x == x and abs(x) != float("inf"):
            return x


def number_texts(rng: random.Random, count: int) -> list[str]:
    """Shortest reprs of any double, float32 values, long decimals with exponents, halfway cases."""
    texts = []
    for _ in range(count):
        kind = rng.randrange(5)
        if kind == 0:
            texts.append(repr(random_double(rng)))
        elif kind == 1:
            texts.append(repr(float(np.float32(rng.uniform(-1e4, 1e4)))))
        elif kind == 2:
            texts.append(f"{'-' if rng.random() < 0.5 else ''}{rng.randrange(1, 10 ** rng.randint(1, 19))}e{rng.randint(-340, 288)}")
        elif kind == 3:
            texts.append(f"{rng.randrange(10 ** 9)}.{rng.randrange(10 ** rng.randint(1, 25))}")
        else:  # exactly halfway between two doubles: rounds to the even one
            halfway = (2 ** 53 + 2 * rng.randrange(2 ** 52) + 1) * 2 ** rng.randint(0, 10)
            texts.append(f"{halfway}.0" if rng.random() < 0.5 else f"{halfway}e0")
    return texts


def test_numbers_are_read_exactly_as_a_json_parser_and_numpy_read_them():
    rng = random.Random(3)
    for _ in range(50):
        body = ('{"instances": [' + ", ".join(number_texts(rng, 2000)) + "]}").encode()
        assert_same(parse_numeric_request(body)[3], reference(body, "instances"))


@pytest.mark.parametrize("text", [
    "18446744073709551616.0", "36893488147419103232e0",  # 2^64, 2^65: more than 19 digits, 0 modulo 2^64
    "0.00000000000000000000001234567890123456789",      # 19 significant digits after 22 zeros
    "0.12345678901234567890", "1234567890123456789.5",  # 20 significant digits
    "0.000000000000000000000000", "-0.0", "-0.0000000000000000000000e5",
    "9007199254740993.0", "0.1e-400", "123456789012345678e-5", "0.5394828319549561",
    "-0, 1.5", "1.5, -0", "3, -9007199254740993, 2.5, -7",  # integers before and after the first float
])
def test_edge_numbers_are_read_exactly(text):
    body = ('{"instances": [' + text + "]}").encode()
    assert_same(parse_numeric_request(body)[3], reference(body, "instances"))


@st.composite
def numeric_bodies(draw):
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    integers = draw(st.booleans())
    values = st.integers(-(10 ** 18) + 1, 10 ** 18 - 1) if integers else st.one_of(
        st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10 ** 18) + 1, 10 ** 18 - 1))
    flat = draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    nested = np.array(flat, dtype=object).reshape(shape).tolist()
    key = draw(st.sampled_from(["instances", "inputs"]))
    name = draw(st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'), max_size=8)))
    if key == "instances":
        name = None
    doc = {key: nested if name is None else {name: nested}}
    if draw(st.booleans()):
        doc["signature_name"] = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'), max_size=12))
    items = list(doc.items())
    if draw(st.booleans()):
        items.reverse()
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
    return json.dumps(dict(items), separators=separators, ensure_ascii=False).encode(), key, name, doc.get("signature_name")


@settings(max_examples=300, deadline=None)
@given(numeric_bodies())
def test_any_numeric_body_is_read_like_the_general_path(case):
    body, key, name, signature_name = case
    parsed = parse_numeric_request(body)
    assert parsed is not None, body
    assert parsed[:3] == (signature_name, key, name)
    assert_same(parsed[3], reference(body, key, name))


@pytest.mark.parametrize("body", [
    b'{"instances": [[1, 2], [3]]}',                 # ragged
    b'{"instances": [[1, 2], 3]}',
    b'{"instances": []}', b'{"instances": [[]]}',    # empty
    b'{"instances": [true]}', b'{"instances": [null]}', b'{"instances": ["1"]}', b'{"instances": [{"b64": "AA=="}]}',
    b'{"instances": [NaN]}', b'{"instances": [1e999]}',  # not finite
    b'{"instances": [1234567890123456789]}',         # 19 digits: may not fit in int64
    b'{"instances": [01]}', b'{"instances": [1.]}', b'{"instances": [.5]}', b'{"instances": [+1]}', b'{"instances": [0x10]}',
    b'{"instances": [1], "inputs": [2]}', b'{"instances": [1], "instances": [2]}',
    b'{"instances": [1], "signature_name": "a", "signature_name": "b"}',
    b'{"instances": [1], "other": 2}', b'{"signature_name": "a"}', b'{"instances": 5}',
    b'{"signature_name": "a\\"b", "instances": [1]}',  # an escape in the string
    b'{"instances": [1]} x', b'{"instances": [1]', b'[1, 2]', b'', b'{"instances": [1]}\x00',
    b'{"inputs": {"a": [1], "b": [2]}}', b'{"inputs": {}}', b'{"inputs": {"a": 1}}', b'{"instances": {"a": [1]}}',
    b'{"inputs": {"a\\u0041": [1]}}',
])
def test_other_bodies_are_left_to_the_general_parser(body):
    assert parse_numeric_request(body) is None


SIGNATURES = [
    {"x": DataType.DT_FLOAT}, {"x": DataType.DT_DOUBLE}, {"x": DataType.DT_INT32}, {"x": DataType.DT_INT64},
    {"x": DataType.DT_UINT8}, {"x": DataType.DT_BOOL}, {"x": DataType.DT_STRING}, {"x": DataType.DT_HALF},
    {"a": DataType.DT_FLOAT, "b": DataType.DT_INT64},
]
BODIES = [
    b'{"instances": [[1.5, 2], [3, -4e2]]}', b'{"inputs": [[1, 2, 3]]}', b'{"instances": [300, -1]}',
    b'{"inputs": {"x": [[1.5, 2]]}}', b'{"inputs": {"a": [1, 2]}}', b'{"inputs": {"nope": [1]}}',
    b'{"instances": [0.1, 0.2], "signature_name": "s"}', b'{"inputs": [[255, 0]]}', b'{"instances": [[1e40]]}',
]


@pytest.mark.parametrize("input_dtypes", SIGNATURES)
@pytest.mark.parametrize("body", BODIES)
def test_predict_body_decodes_and_refuses_exactly_like_decode_request(body, input_dtypes):
    def outcome(decode):
        try:
            inputs, row_format = decode()
        except ServingError as exc:
            return exc.code, exc.message
        return row_format, {k: (v.dtype, v.shape, v.tobytes()) for k, v in inputs.items()}

    request = PredictBody(body)
    assert request.signature_name == (loads(body).get("signature_name") or "")
    assert outcome(lambda: request.decode(input_dtypes)) == outcome(lambda: decode_request(loads(body), input_dtypes))
