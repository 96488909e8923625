"""What every part of the configuration checks with: the error, and its checks of a value
that name the key it came from."""


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


def mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def known(doc: dict, keys, where: str) -> None:
    for key in doc:
        if key not in keys:
            raise ConfigError(f"{where}.{key}: unknown key (expected one of: {', '.join(keys)})")


def typed(values: dict, types: dict, where: str) -> None:
    """Each value is of its key's type (a bool is not a number)."""
    for key, value in values.items():
        expected = types[key]
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            name = expected.__name__ if isinstance(expected, type) else "number"
            raise ConfigError(f"{where}.{key}: expected {name}, got {value!r}")


def share(value) -> str | None:
    """Why `value` is not a share of the time, more than 0 and at most 1 (None: it is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        return f"expected a number more than 0 and at most 1, got {value!r}"
    return None


def fraction(rate) -> str | None:
    """Why `rate` is not a fraction from 0 to 1 (None: it is)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        return f"expected a fraction from 0 to 1, got {rate!r}"
    return None
