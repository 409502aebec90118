"""MQTT topic grammar (gateway/mqtt_topics.py): properties against independent oracles."""

from __future__ import annotations

import itertools
import re

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt import topic_matches
from gateway.mqtt_topics import (alert_topics, filter_problem, filters_overlap, name_problem,
                                 prefix_problem)

# MQTT 3.1.1 section 4.7 as one regular expression: levels of anything but '/', '+' and '#', or a
# lone '+', and a lone '#' only as the last level.
FILTER = re.compile(r"(?:(?:\+|[^/+#]*)/)*(?:\+|[^/+#]*|#)", re.S)

pieces = st.sampled_from(["a", "b", "/", "+", "#", "$", "x+", "#a", "中", " ", "\x00", "\t"])
texts = st.lists(pieces, max_size=8).map("".join)


@given(texts)
def test_filter_grammar_matches_the_standard(f):
    standard = bool(f) and FILTER.fullmatch(f) is not None and not f.startswith("$") \
        and not re.search(r"[\x00-\x1f]", f)
    assert (filter_problem(f) is None) == standard, (f, filter_problem(f))


@given(texts)
def test_a_filter_we_accept_is_one_the_mqtt_client_accepts(f):
    if filter_problem(f) is None:
        aiomqtt.Wildcard(f)  # `run` subscribes with it: a ValueError here was a traceback at start


@given(texts)
def test_names_and_prefixes_have_no_wildcards(t):
    if "+" in t or "#" in t:
        assert name_problem(t) is not None and prefix_problem(t) is not None
    if name_problem(t) is None:
        assert filter_problem(t) is None  # a topic name is also a filter (matching itself)
        assert topic_matches(t, t)
    if prefix_problem(t) is None:
        assert name_problem(t) is None and "" not in t.split("/")


LEVELS = ["a", "b", "", "+"]


def filters(first_dollar: bool = True):
    """Valid filters of up to four levels, some ending in '#', some starting with a '$' level."""
    body = st.lists(st.sampled_from(LEVELS), min_size=0, max_size=4)
    end = st.sampled_from(["", "#"])
    head = st.sampled_from(["", "$s"] if first_dollar else [""])

    def build(parts):
        h, levels, e = parts
        return "/".join(([h] if h else []) + levels + ([e] if e else [])) or "a"
    return st.tuples(head, body, end).map(build)


WITNESS_LEVELS = ["a", "b", "", "c", "$s"]   # every literal used above, one fresh level, a '$' level


def witness_topics(longest: int):
    for n in range(1, longest + 1):
        for levels in itertools.product(WITNESS_LEVELS, repeat=n):
            if all(not x.startswith("$") for x in levels[1:]):
                yield "/".join(levels)


@settings(max_examples=300)
@given(filters(), filters())
def test_overlap_is_exactly_a_topic_matching_both(a, b):
    longest = max(a.count("/"), b.count("/")) + 1
    brute = any(topic_matches(a, t) and topic_matches(b, t) for t in witness_topics(longest))
    assert filters_overlap(a, b) == brute == filters_overlap(b, a), (a, b)


@pytest.mark.parametrize("topic, problem", [
    ("#", None), ("wanhu/acs/+/swipe", None), ("wanhu/#", None), ("+", None), ("中文/主题", None),
    ("", "a topic cannot be empty"), ("$SYS/#", "topics starting with '$' belong to the broker"),
    ("$share/g/a", "topics starting with '$' belong to the broker"),
    ("x/#/swipe", "'#' must be a whole level and the last one"), ("x#", "'#' must be a whole level"),
    ("a/b+", "'+' must be a whole level"), ("a\x00b", "NUL"), ("a\tb", "control characters"),
    ("a\ufffe", "noncharacters"), ("\ud800", "lone surrogate"), ("é" * 32768, "65536 bytes"),
])
def test_filter_examples(topic, problem):
    got = filter_problem(topic)
    assert got is None if problem is None else problem in got


def test_the_alert_topics_of_a_prefix():
    own = alert_topics("wanhu/alerts")
    assert filters_overlap("#", own) and filters_overlap("wanhu/+/voltage-high/#", own)
    assert filters_overlap("+/alerts/+/B01-stair", own)
    assert not filters_overlap("wanhu/acs/#", own) and not filters_overlap("wanhu/alerts", own)
    assert not filters_overlap("wanhu/alerts/+/+/x", own)
