import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import *  # noqa: F403 (the records of `cutover plugin wit`)


def parse_config(text: str, keys: dict) -> dict:
    """The config JSON as a dict with every key of `keys` (name -> default).

    Raises Err (the host shows its message as the config error) for malformed JSON
    or an unknown key. The host passes `{}` when the config is left out.
    """
    try:
        config = json.loads(text)
    except ValueError as e:
        raise Err(f"the config is not JSON: {e}")
    if not isinstance(config, dict):
        raise Err("the config must be a table")
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise Err(f"unknown key(s) {', '.join(unknown)}; the keys are {', '.join(keys)}")
    return {**keys, **config}
