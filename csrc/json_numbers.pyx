# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The common TF Serving REST predict body, read straight into one numpy array.

    parse_numeric_request(body) -> (signature_name | None, "instances" | "inputs", input_name | None, ndarray) | None

Most :predict bodies are {"instances": <nested array of numbers>}, {"inputs": <nested
array>} or {"inputs": {"<input name>": <nested array>}}, perhaps with a "signature_name". A general JSON parser makes a Python object of every number
first (a 224x224x3 image: 150,000 of them, ~35 ms in orjson, then ~15 ms for numpy to
read them back); this reads the numbers into one buffer in a single pass, and that
buffer becomes the array.

It takes only those shapes of body: one JSON object whose members are "signature_name" (a
string without escapes) and one of "instances"/"inputs" holding a non-empty rectangular
nested array of JSON numbers ("inputs" may instead hold an object with one such array,
under a name without escapes). Anything else (objects, strings, booleans, null, NaN,
ragged or empty arrays, integers of 19 digits or more, other or repeated keys, invalid
JSON) returns None, and the caller parses the body the general way, which also words the
errors. The values are those numpy gives from the parsed JSON: int64 when every number
is written as an integer, else float64, each number correctly rounded: exact arithmetic
where the decimal fits in 53 bits and a power of ten up to 1e22; else, for up to 19
significant digits, the Eisel-Lemire method (a 64x128-bit product with a truncated
power of five, as in Lemire's "Number Parsing at a Gigabyte per Second"); else, and
wherever that method cannot decide, C's strtod.
"""
from libc.math cimport isfinite
from libc.stdint cimport int64_t, uint64_t
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.stdlib cimport free, realloc, strtod
from libc.string cimport memcpy

cimport numpy as cnp

cnp.import_array()

cdef extern from *:
    """
    static inline void fs_multiply(uint64_t a, uint64_t b, uint64_t* high, uint64_t* low) {
        unsigned __int128 product = (unsigned __int128)a * b;
        *high = (uint64_t)(product >> 64);
        *low = (uint64_t)product;
    }
    static inline int fs_leading_zeros(uint64_t x) { return __builtin_clzll(x); }
    /* The value of the eight ASCII digits at p, or -1 when any of them is not a digit. The
       bytes are read as one little-endian word (first digit lowest) and combined pairwise:
       digits -> 2-digit numbers in 16-bit lanes -> 4-digit in 32-bit lanes -> 8 digits. */
    static inline int64_t fs_eight_digits(const char* p) {
        uint64_t v;
        memcpy(&v, p, 8);
        if ((v & 0xF0F0F0F0F0F0F0F0ULL) != 0x3030303030303030ULL ||
            ((v + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) != 0x3030303030303030ULL)
            return -1;
        v -= 0x3030303030303030ULL;
        v = (v * 10 + (v >> 8)) & 0x00FF00FF00FF00FFULL;
        v = (v * 100 + (v >> 16)) & 0x0000FFFF0000FFFFULL;
        return (int64_t)((v * 10000 + (v >> 32)) & 0xFFFFFFFFULL);
    }
    """
    void fs_multiply(uint64_t a, uint64_t b, uint64_t* high, uint64_t* low) noexcept nogil
    int fs_leading_zeros(uint64_t x) noexcept nogil
    int64_t fs_eight_digits(const char* p) noexcept nogil

cdef enum:
    MAX_DIMS = 32
    SMALLEST_POWER = -342  # of ten, with a table entry; below it every 19-digit decimal is 0
    LARGEST_POWER = 308

# The top 128 bits of 5^q (q >= 0) or of 2^b / 5^-q (q < 0), truncated, for q in SMALLEST..LARGEST_POWER.
cdef uint64_t _POWERS_OF_FIVE[2 * (LARGEST_POWER - SMALLEST_POWER + 1)]


def _fill_powers_of_five() -> None:
    for q in range(SMALLEST_POWER, LARGEST_POWER + 1):
        if q >= 0:
            power = 5 ** q
            bits = power.bit_length()
            top = power << (128 - bits) if bits <= 128 else power >> (bits - 128)
        else:
            divisor = 5 ** -q
            top = (1 << (127 + divisor.bit_length())) // divisor
        index = 2 * (q - SMALLEST_POWER)
        _POWERS_OF_FIVE[index] = top >> 64
        _POWERS_OF_FIVE[index + 1] = top & 0xFFFFFFFFFFFFFFFF


_fill_powers_of_five()


cdef int _eisel_lemire(uint64_t w, int q, double* out) noexcept nogil:
    """w x 10^q as the nearest double (w != 0, at most 19 digits); -1 when this method cannot tell."""
    cdef uint64_t high, low, second_high, second_low, mantissa, bits
    cdef int leading, upper_bit, shift, index
    cdef int64_t power2
    if q < SMALLEST_POWER or q > LARGEST_POWER:
        return -1
    leading = fs_leading_zeros(w)
    w <<= leading
    index = 2 * (q - SMALLEST_POWER)
    fs_multiply(w, _POWERS_OF_FIVE[index], &high, &low)
    if (high & 0x1FF) == 0x1FF:  # the bits below the 55 kept may carry: use the next 64 bits of 5^q
        fs_multiply(w, _POWERS_OF_FIVE[index + 1], &second_high, &second_low)
        low += second_high
        if second_high > low:
            high += 1
    if low == ~(<uint64_t> 0):
        return -1  # might still carry
    upper_bit = <int> (high >> 63)
    shift = upper_bit + 9
    mantissa = high >> shift
    power2 = (((152170 + 65536) * <int64_t> q) >> 16) + 63 + upper_bit - leading + 1023
    if power2 <= 0:
        return -1  # subnormal
    if low <= 1 and -4 <= q <= 23 and (mantissa & 3) == 1 and (mantissa << shift) == high:
        mantissa &= ~(<uint64_t> 1)  # exactly halfway: round to even
    mantissa += mantissa & 1
    mantissa >>= 1
    if mantissa >= (<uint64_t> 2 << 52):
        mantissa = <uint64_t> 1 << 52
        power2 += 1
    mantissa &= ~(<uint64_t> 1 << 52)
    if power2 >= 0x7FF:
        return -1  # infinite
    bits = mantissa | (<uint64_t> power2 << 52)
    memcpy(out, &bits, sizeof(double))
    return 0

cdef double[23] _POWERS_OF_TEN = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
]


cdef union _Slot:  # one number: an int64 while every number so far is an integer, else a double
    int64_t integer
    double value


cdef struct _Parser:
    const char* p
    const char* end               # the body's end (a NUL follows it)
    _Slot* slots
    Py_ssize_t count
    Py_ssize_t capacity
    bint all_integers
    int ndim                      # -1 until the first number fixes the depth of the leaves
    Py_ssize_t shape[MAX_DIMS]
    bint seen[MAX_DIMS]


cdef inline void _skip_space(_Parser* s) noexcept nogil:
    while s.p[0] == b' ' or s.p[0] == b'\n' or s.p[0] == b'\r' or s.p[0] == b'\t':
        s.p += 1


cdef inline bint _digit(char c) noexcept nogil:
    return b'0' <= c <= b'9'


cdef int _grow(_Parser* s, Py_ssize_t capacity) noexcept nogil:
    cdef _Slot* slots = <_Slot*> realloc(s.slots, capacity * sizeof(_Slot))
    if slots == NULL:
        return -1
    s.slots = slots
    s.capacity = capacity
    return 0


cdef void _free_slots(object capsule) noexcept:
    free(PyCapsule_GetPointer(capsule, NULL))


cdef inline const char* _read_digits(const char* p, const char* end, uint64_t* mantissa) noexcept nogil:
    """The end of the digits at p, read eight at a time while eight follow, each added to the mantissa
    (modulo 2^64: the caller uses it only when it has at most 19 significant digits)."""
    cdef int64_t eight
    while end - p >= 8:
        eight = fs_eight_digits(p)
        if eight < 0:
            break
        mantissa[0] = mantissa[0] * 100000000 + <uint64_t> eight
        p += 8
    while _digit(p[0]):
        mantissa[0] = mantissa[0] * 10 + <uint64_t> (p[0] - c'0')
        p += 1
    return p


cdef int _number(_Parser* s) noexcept nogil:
    """One JSON number (RFC 8259 grammar) at s.p; -1 when there is none."""
    cdef const char* start = s.p
    cdef const char* p = s.p
    cdef const char* digits
    cdef bint negative = p[0] == b'-'
    cdef bint integer = True
    cdef uint64_t mantissa = 0    # the digits' value, exact while there are at most 19 significant ones
    cdef Py_ssize_t integer_digits, fraction_digits = 0, significant
    cdef int exponent = 0         # of ten, applied to the mantissa
    cdef int written_exponent = 0
    cdef bint exponent_negative = False
    cdef double value
    cdef int64_t whole
    cdef Py_ssize_t i
    cdef char* end
    if negative:
        p += 1
    digits = p
    if p[0] == b'0':
        p += 1
    elif b'1' <= p[0] <= b'9':
        p = _read_digits(p, s.end, &mantissa)
    else:
        return -1
    integer_digits = p - digits
    if p[0] == b'.':
        p += 1
        digits = p
        p = _read_digits(p, s.end, &mantissa)
        fraction_digits = p - digits
        if fraction_digits == 0:
            return -1
        exponent = -<int> fraction_digits if fraction_digits < 100000 else -100000
        integer = False
    significant = integer_digits + fraction_digits
    if significant > 19:  # leading zeros ("0.000123") are not significant
        digits = start + negative
        while digits[0] == b'0' or digits[0] == b'.':
            if digits[0] == b'0':
                significant -= 1
            digits += 1
    if p[0] == b'e' or p[0] == b'E':
        p += 1
        if p[0] == b'+' or p[0] == b'-':
            exponent_negative = p[0] == b'-'
            p += 1
        if not _digit(p[0]):
            return -1
        while _digit(p[0]):
            if written_exponent < 100000:
                written_exponent = written_exponent * 10 + (p[0] - c'0')
            p += 1
        exponent += -written_exponent if exponent_negative else written_exponent
        integer = False
    if integer and integer_digits > 18:
        return -1  # may not fit in int64: the general parser decides
    if s.count == s.capacity and _grow(s, s.capacity * 2) < 0:
        return -1
    if integer:  # an int, as a JSON parser reads it; a double (as numpy converts it) once a float was seen
        whole = -<int64_t> mantissa if negative else <int64_t> mantissa
        if s.all_integers:
            s.slots[s.count].integer = whole
        else:
            s.slots[s.count].value = <double> whole
    else:
        if significant > 19:
            value = strtod(start + negative, &end)
            if end != p:
                return -1
        elif mantissa == 0:
            value = 0.0
        elif mantissa <= (<uint64_t> 1 << 53) and -22 <= exponent <= 22:
            # Both operands are exact doubles: one correctly rounded operation.
            value = <double> mantissa
            value = value * _POWERS_OF_TEN[exponent] if exponent >= 0 else value / _POWERS_OF_TEN[-exponent]
        elif _eisel_lemire(mantissa, exponent, &value) < 0:
            value = strtod(start + negative, &end)
            if end != p:
                return -1
        if negative:
            value = -value
        if not isfinite(value):
            return -1
        if s.all_integers:  # the first float: the integers before it become doubles too
            for i in range(s.count):
                s.slots[i].value = <double> s.slots[i].integer
            s.all_integers = False
        s.slots[s.count].value = value
    s.count += 1
    s.p = p
    return 0


cdef int _array(_Parser* s, int depth) noexcept nogil:
    """A nested array of numbers at s.p (on its '['), rectangular with the arrays seen before."""
    cdef Py_ssize_t length = 0
    cdef int more
    s.p += 1
    while True:
        _skip_space(s)
        if s.p[0] == b'[':
            if depth + 1 >= MAX_DIMS or (s.ndim != -1 and depth + 1 >= s.ndim):
                return -1
            if _array(s, depth + 1) < 0:
                return -1
        else:
            if s.ndim == -1:
                s.ndim = depth + 1
            elif s.ndim != depth + 1:
                return -1
            if _number(s) < 0:
                return -1
        length += 1
        more = _next_member(s, b']')
        if more < 0:
            return -1
        if not more:
            break
    if s.seen[depth]:
        return 0 if s.shape[depth] == length else -1
    s.seen[depth] = True
    s.shape[depth] = length
    return 0


cdef int _next_member(_Parser* s, char closer) noexcept nogil:
    """After a member of an array or object: 1 if a comma follows, 0 at its closer, -1 otherwise."""
    _skip_space(s)
    if s.p[0] == b',':
        s.p += 1
        return 1
    if s.p[0] == closer:
        s.p += 1
        return 0
    return -1


cdef Py_ssize_t _plain_string(_Parser* s) noexcept nogil:
    """Length of the escape-free string at s.p (on its opening quote); s.p moves past it. -1: not one."""
    cdef const char* start = s.p + 1
    cdef const char* p = start
    while p[0] != b'"':
        if p[0] == b'\\' or <unsigned char> p[0] < 0x20:  # escapes, control bytes, the terminating NUL
            return -1
        p += 1
    s.p = p + 1
    return p - start


cdef Py_ssize_t _member_name(_Parser* s, const char** name) noexcept nogil:
    """An object member's escape-free name and its colon; s.p moves to the value. -1: not one."""
    _skip_space(s)
    if s.p[0] != b'"':
        return -1
    name[0] = s.p + 1
    cdef Py_ssize_t length = _plain_string(s)
    _skip_space(s)
    if length < 0 or s.p[0] != b':':
        return -1
    s.p += 1
    _skip_space(s)
    return length


cdef str _text(const char* start, Py_ssize_t length):
    try:
        return start[:length].decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_numeric_request(bytes body):
    cdef _Parser s
    cdef const char* key
    cdef Py_ssize_t length
    cdef int i, more
    cdef cnp.npy_intp count
    s.p = body  # CPython keeps a NUL after every bytes object: every scan stops there at the latest
    s.end = s.p + len(body)
    s.slots = NULL
    s.count = 0
    s.capacity = 0
    s.all_integers = True
    s.ndim = -1
    for i in range(MAX_DIMS):
        s.seen[i] = False
    signature_name = None
    tensor_key = None
    input_name = None
    # room for the numbers of a body of 17-digit floats, or 1024 (it grows as needed)
    if _grow(&s, max(1024, len(body) // 20)) < 0:
        raise MemoryError()
    try:
        _skip_space(&s)
        if s.p[0] != b'{':
            return None
        s.p += 1
        while True:
            length = _member_name(&s, &key)
            if length < 0:
                return None
            if length == 14 and key[:14] == b"signature_name" and signature_name is None:
                if s.p[0] != b'"':
                    return None
                key = s.p + 1
                length = _plain_string(&s)
                if length < 0:
                    return None
                signature_name = _text(key, length)
                if signature_name is None:
                    return None
            elif tensor_key is None and ((length == 9 and key[:9] == b"instances") or (length == 6 and key[:6] == b"inputs")):
                tensor_key = key[:length].decode("ascii")
                if tensor_key == "inputs" and s.p[0] == b'{':  # {"<input name>": <array>}
                    s.p += 1
                    length = _member_name(&s, &key)
                    input_name = _text(key, length) if length >= 0 else None
                    if input_name is None:
                        return None
                    if s.p[0] != b'[' or _array(&s, 0) < 0 or _next_member(&s, b'}') != 0:
                        return None
                elif s.p[0] != b'[' or _array(&s, 0) < 0:
                    return None
            else:
                return None
            more = _next_member(&s, b'}')
            if more < 0:
                return None
            if not more:
                break
        _skip_space(&s)
        if tensor_key is None or s.p != s.end:
            return None
        shape = tuple([s.shape[i] for i in range(s.ndim)])
        _grow(&s, s.count)  # (shrinking in place)
        count = s.count
        # the array takes the numbers' buffer (no copy); the capsule frees it with the array
        array = cnp.PyArray_SimpleNewFromData(1, &count, cnp.NPY_INT64 if s.all_integers else cnp.NPY_FLOAT64, s.slots)
        cnp.set_array_base(array, PyCapsule_New(s.slots, NULL, _free_slots))
        s.slots = NULL
        return signature_name, tensor_key, input_name, array.reshape(shape)
    finally:
        free(s.slots)
