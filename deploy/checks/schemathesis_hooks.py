"""Hooks for deploy/checks/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

An Idempotency-Key names one request: the same key with another body is refused with 422
by design (README, "Idempotency"). Schemathesis draws keys independently of bodies, so
short keys such as "0" come back with other bodies and would be refused for that reason
alone. Each request of valid data therefore gets a key of its own: a valid key keeps its
text and gains a unique suffix (it stays valid). Requests of invalid data are sent as
drawn (they are refused either way, and an edit here would make Schemathesis take them
for valid ones: a request that tests a missing Authorization header would get it back).
"""
import itertools
import re

import schemathesis

VALID_KEY = re.compile(r"(?!schedule:)[!-~]{1,255}\Z")
_sequence = itertools.count()


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers
    if not headers or case.meta is None or case.meta.generation.mode.is_negative:
        return
    for name in list(headers):
        key = headers[name]
        if name.lower() == "idempotency-key" and isinstance(key, str) and VALID_KEY.match(key):
            suffix = f"~{next(_sequence)}"
            headers[name] = key[: 255 - len(suffix)] + suffix
