# st2common.util.jinja: StackStorm's Jinja environment for Python actions
# that render templates themselves (the chatops pack's
# format_execution_result renders an alias's `result.format` with it).
# Same settings as StackStorm's: sandboxed, trim_blocks and lstrip_blocks,
# StrictUndefined unless allow_undefined, the `in` test, and the filters
# that need nothing beyond the standard library. jinja2 itself comes from
# the interpreter, as in StackStorm's own virtualenv.
import datetime
import json
import os
import re

import six

__all__ = ["get_jinja_environment", "render_values", "is_jinja_expression"]

JINJA_EXPRESSIONS_START_MARKERS = ["{{", "{%"]


def to_human_time_from_seconds(seconds):
    """3725 -> '1h2m5s', as StackStorm's filter."""
    if seconds is None:
        return None
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return "%s\u03bcs" % seconds
    if isinstance(seconds, float):
        seconds = int(round(seconds))
    offset = datetime.datetime(1, 1, 1) + datetime.timedelta(seconds=seconds)
    parts = [offset.year - 1, offset.day - 1, offset.hour, offset.minute, offset.second]
    first = next((i for i, x in enumerate(parts) if x), None)
    if first is None:
        return "0s"
    parts = parts[first:]
    units = ["y", "d", "h", "m", "s"][-len(parts):]
    return "".join("%s%s" % (p, u) for p, u in zip(parts, units))


def _regex_match(value, pattern, ignorecase=False):
    return re.match(pattern, value, re.IGNORECASE if ignorecase else 0) is not None


def _regex_search(value, pattern, ignorecase=False):
    return re.search(pattern, value, re.IGNORECASE if ignorecase else 0) is not None


def _regex_replace(value, pattern, replacement, ignorecase=False):
    return re.sub(pattern, replacement, value, flags=re.IGNORECASE if ignorecase else 0)


def _regex_substring(value, pattern, result_index=0, ignorecase=False):
    return re.findall(pattern, value, re.IGNORECASE if ignorecase else 0)[result_index]


def _to_json_string(value, indent=None, sort_keys=False, separators=(",", ": ")):
    return json.dumps(value, indent=indent, sort_keys=sort_keys, separators=separators)


def _json_escape(value):
    return json.dumps(value)[1:-1] if isinstance(value, str) else value


def _use_none(value):
    return "%*****__%NONE%__*****%" if value is None else value


def get_filters():
    return {
        "from_json_string": json.loads,
        "json_escape": _json_escape,
        "to_json_string": _to_json_string,
        "regex_match": _regex_match,
        "regex_replace": _regex_replace,
        "regex_search": _regex_search,
        "regex_substring": _regex_substring,
        "to_human_time_from_seconds": to_human_time_from_seconds,
        "use_none": _use_none,
        "basename": os.path.basename,
        "dirname": os.path.dirname,
    }


def get_jinja_environment(allow_undefined=False, trim_blocks=True, lstrip_blocks=True):
    import jinja2
    import jinja2.sandbox

    undefined = jinja2.Undefined if allow_undefined else jinja2.StrictUndefined
    env = jinja2.sandbox.SandboxedEnvironment(  # nosec
        undefined=undefined, trim_blocks=trim_blocks, lstrip_blocks=lstrip_blocks
    )
    env.filters.update(get_filters())
    env.tests["in"] = lambda item, list: item in list
    return env


def render_values(mapping=None, context=None, allow_undefined=False):
    """Renders every value of `mapping` with `context` (`__context` too);
    lists and dicts through their JSON text, unchanged values keep their
    type, as StackStorm's render_values."""
    if not context or not mapping:
        return mapping
    super_context = {"__context": context}
    super_context.update(context)
    env = get_jinja_environment(allow_undefined=allow_undefined)
    rendered = {}
    for k, v in six.iteritems(mapping):
        reverse_json = False
        if isinstance(v, (dict, list)):
            v = json.dumps(v)
            reverse_json = True
        elif not isinstance(v, six.string_types):
            v = str(v)
        try:
            out = env.from_string(v).render(super_context)
        except Exception as e:
            e.key = k
            e.value = v
            raise e
        if out == v:
            rendered[k] = mapping[k]
            continue
        rendered[k] = json.loads(out) if reverse_json else out
    return rendered


def is_jinja_expression(value):
    if not value or not isinstance(value, six.string_types):
        return False
    return any(marker in value for marker in JINJA_EXPRESSIONS_START_MARKERS)
