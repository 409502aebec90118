"""MQTT 3.1.1 topic grammar as small pure functions (the site file's checks; the link may use them).

A topic *name* (what is published) has no wildcards. A topic *filter* (what is subscribed) may
have `+` (any one level) and `#` (the rest: the last level only), each alone in its level. Both
are non-empty, well-formed UTF-8 of at most 65,535 bytes without NUL (MQTT 3.1.1 section 1.5.3,
4.7); control characters and Unicode noncharacters are refused too (the standard says SHOULD NOT;
mosquitto drops the connection of a client that subscribes to one). Topics starting with `$` belong to the broker (`$SYS/...`): the
gateway neither subscribes nor publishes them, which also leaves out `$share/...`.
"""

from __future__ import annotations

import re

MAX_TOPIC_BYTES = 65535
_NONCHARACTERS = "".join(chr(plane | 0xFFFE) + chr(plane | 0xFFFF) for plane in range(0, 0x110000, 0x10000))
_REFUSED = re.compile("[\x01-\x1f\x7f-\x9f\ufdd0-\ufdef" + _NONCHARACTERS + "]")


def _text_problem(topic: str) -> str | None:
    if not topic:
        return "a topic cannot be empty"
    if "\x00" in topic:
        return "a topic cannot contain a NUL character"
    if _REFUSED.search(topic):
        return "a topic cannot contain control characters or Unicode noncharacters"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8 (a lone surrogate)"
    if size > MAX_TOPIC_BYTES:
        return f"{size} bytes: a topic has at most {MAX_TOPIC_BYTES}"
    if topic.startswith("$"):
        return "topics starting with '$' belong to the broker ($SYS/...)"
    return None


def filter_problem(topic_filter: str) -> str | None:
    """Why `topic_filter` cannot be subscribed to, or None."""
    problem = _text_problem(topic_filter)
    if problem:
        return problem
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one (e.g. site/acs/#)"
        if "+" in level and level != "+":
            return "'+' must be a whole level (e.g. site/+/swipe)"
    return None


def name_problem(topic: str) -> str | None:
    """Why `topic` cannot be published to, or None."""
    problem = _text_problem(topic)
    if problem:
        return problem
    if "+" in topic or "#" in topic:
        return "'+' and '#' are for subscribing: a message is published to one topic"
    return None


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot begin the topics the gateway publishes (`<prefix>/...`), or None."""
    problem = name_problem(prefix)
    if problem:
        return problem
    if "" in prefix.split("/"):
        return "an empty level (a leading, trailing or double '/')"
    return None


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic name matches both filters (valid filters; a topic name is a filter too)."""
    x, y = a.split("/"), b.split("/")
    for i in range(max(len(x), len(y))):
        p = x[i] if i < len(x) else None
        q = y[i] if i < len(y) else None
        if i == 0 and (p in ("+", "#") and q.startswith("$") or q in ("+", "#") and p.startswith("$")):
            return False  # a wildcard first level does not match a '$' topic
        if p == "#" or q == "#":
            return True   # '#' also matches the parent: 'a/#' matches 'a'
        if p is None or q is None:
            return False
        if p != q and p != "+" and q != "+":
            return False
    return True


def alert_topics(prefix: str) -> str:
    """The filter of every topic the gateway publishes: alerts `<prefix>/<rule>/<source>`
    (gateway/sinks/alert_message.py; nothing else is published)."""
    return f"{prefix}/+/+"
