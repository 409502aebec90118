"""The site-file check against mutated copies of the example site: every result is OK or a list of
problems, one line each with its path, never an exception; the CLI exits 2 without a traceback.

A case takes edge_config/site.example.yaml as data, applies 1-3 random structural mutations
(seeded: a failure names the seed and the mutations, `mutated_site(seed)` rebuilds it) and writes
it back as YAML with a small flow-style writer that can also put raw YAML anywhere (bad tags,
huge numbers, deep nesting, alias bombs, a key twice), so the whole path is exercised: the file,
the loader, the models and the checks across sections.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import pytest

from gateway.cli import EXAMPLE_SITE
from gateway.config import ConfigError, load_site
from gateway.yamlfile import read_yaml_file

EXAMPLE = read_yaml_file(EXAMPLE_SITE)


class Raw(str):
    """YAML text written as it is."""


class Twice(dict):
    """A mapping written with its first key twice."""


def emit(x) -> str:
    if isinstance(x, Raw):
        return str(x)
    if isinstance(x, dict):
        items = [f"{emit(k)}: {emit(v)}" for k, v in x.items()]
        if isinstance(x, Twice) and items:
            items.append(items[0])
        return "{" + ", ".join(items) + "}"
    if isinstance(x, list):
        return "[" + ", ".join(emit(v) for v in x) + "]"
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}.get(repr(x), f"!!float {x!r}")
    if isinstance(x, (date, datetime)):
        return x.isoformat()
    return json.dumps(x, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def document(data: dict) -> str:
    return "".join(f"{emit(k)}: {emit(v)}\n" for k, v in data.items())


def _bomb(name: str) -> Raw:
    """Nine levels of ten aliases each: a billion nodes once expanded."""
    levels = [f"&{name}0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"&{name}{i} [" + ", ".join([f"*{name}{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return Raw("[" + ", ".join(levels) + "]")


def _nasty(rng: random.Random, old, tree: dict, n: int):
    """A value to put where `old` was; `n` makes anchor names unique in the document."""
    choices = [
        lambda: [old], lambda: {"a": 1}, lambda: None, lambda: Raw("9" * 5000), lambda: Raw("!!float x"),
        lambda: Raw("[" * 20000 + "]" * 20000), lambda: Raw("[" * 20000), lambda: _bomb(f"b{n}_"),
        lambda: Raw(f"&c{n} [*c{n}]"), lambda: Raw("{? [a]: 1}"), lambda: Raw("!!bool x"),
        lambda: Raw("!!timestamp x"), lambda: Raw("2025-02-30"), lambda: Raw("0x" + "f" * 90),
        lambda: Raw("!!int 0x" + "f" * 3000), lambda: Raw("!!binary x!"), lambda: Raw("!!set {a: 1}"),
        lambda: Raw("!!omap {a: 1}"), lambda: Raw("!!python/object/apply:os.system [true]"),
        lambda: "#", lambda: "$SYS/#", lambda: "", lambda: "x/#/swipe", lambda: "a\x00b", lambda: "a\nb",
        lambda: "x" * 100_000, lambda: rng.randint(-10, 300), lambda: 10 ** 30, lambda: float("nan"),
        lambda: float("inf"), lambda: True, lambda: date(2025, 1, 1), lambda: "中文",
        lambda: copy.deepcopy(rng.choice(_slots(tree))[2]),
        lambda: Twice(old) if isinstance(old, dict) and old else [old, old],
    ]
    return rng.choice(choices)()


def _slots(tree) -> list[tuple[object, object, object]]:
    """(container, key or index, value) of every value in the tree, written raw values excluded."""
    out = []

    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in list(items):
            if not isinstance(v, Raw):
                out.append((node, k, v))
                walk(v)
    walk(tree)
    return out


def mutate(rng: random.Random, tree: dict, n: int) -> str:
    """One random mutation of `tree` in place; says what it did."""
    parent, key, old = rng.choice(_slots(tree))
    where = f"[{key!r}]"
    what = rng.random()
    if what < 0.55:
        parent[key] = new = _nasty(rng, old, tree, n)
        return f"{where} = {emit(new)[:60]}"
    if what < 0.7:
        del parent[key]
        return f"del {where}"
    if what < 0.8 and isinstance(old, list) and old:
        old.append(copy.deepcopy(rng.choice(old)))
        return f"{where} += a copy of one of its entries"
    if isinstance(parent, dict):
        new_key = rng.choice(["unknown_key", "password", 7, "id", "type", "topic"])
        parent.pop(key)
        parent[new_key] = old
        return f"rename {where} to {new_key!r}"
    parent.insert(0, copy.deepcopy(old))
    return f"{where} duplicated"


def mutated_site(seed: int) -> tuple[str, list[str]]:
    rng = random.Random(seed)
    tree = copy.deepcopy(EXAMPLE)
    done = [mutate(rng, tree, n) for n in range(rng.randint(1, 3))]
    return document(tree), done


def check(path: Path) -> list[str] | None:
    """None when the file is valid, else its problems; anything else raised fails the test."""
    try:
        load_site(path)
    except ConfigError as e:
        return e.problems
    return None


def run_cases(tmp_path: Path, seeds: range) -> Counter:
    outcome: Counter = Counter()
    path = tmp_path / "site.yaml"
    for seed in seeds:
        text, done = mutated_site(seed)
        path.write_text(text, encoding="utf-8")
        try:
            problems = check(path)
        except Exception as e:  # noqa: BLE001 - the failure to report
            pytest.fail(f"seed {seed} ({'; '.join(done)}): {type(e).__name__}: {e}"[:2000])
        if problems is None:
            outcome["ok"] += 1
            continue
        outcome["problems"] += 1
        assert problems, (seed, done)
        for p in problems:
            assert isinstance(p, str) and "\n" not in p and 0 < len(p) <= 500, (seed, done, p[:600])
            assert ": " in p, (seed, done, p)  # 'where: what'
    return outcome


def test_example_site_round_trips_through_the_writer(tmp_path):
    (tmp_path / "site.yaml").write_text(document(copy.deepcopy(EXAMPLE)), encoding="utf-8")
    assert check(tmp_path / "site.yaml") is None


def test_mutated_sites_give_problems_never_exceptions(tmp_path):
    outcome = run_cases(tmp_path, range(300))
    assert outcome["problems"] > 250, outcome  # the mutations do break things


@pytest.mark.long
def test_many_mutated_sites_give_problems_never_exceptions(tmp_path):
    outcome = run_cases(tmp_path, range(1000, 6000))
    print(f"\nmutated sites checked: {sum(outcome.values())} ({outcome['problems']} with problems, "
          f"{outcome['ok']} still valid)")
    assert outcome["problems"] > 4000, outcome


# ---- the CLI, on the nastiest cases the issue names -------------------------------------------

TEXT = EXAMPLE_SITE.read_text(encoding="utf-8")
NASTY = {
    "bus list": (TEXT.replace("bus: bus-n1, unit: 1,", "bus: [bus-n1], unit: 1,", 1),
                 "meters[0].bus: Input should be a valid string (found a list)"),
    "door mapping": (TEXT.replace("door: gate-s,", "door: {a: 1},", 1),
                     "card_readers[2].door: Input should be a valid string (found a mapping)"),
    "float tag": (TEXT.replace("poll_s: 30", "poll_s: !!float x", 1), "'x' is not a valid float"),
    "5000 digits": (TEXT.replace("poll_s: 30", "poll_s: " + "9" * 5000, 1),
                    "a number of 5000 characters is too long"),
    "20000 [": (TEXT + "x: " + "[" * 20000 + "\n", "nested more than 50 levels deep"),
    "alias bomb": (TEXT.replace("meter_models: []", f"meter_models: {_bomb('l')}"),
                   "aliases expand to more than 1,000,000 nodes"),
    "alias cycle": (TEXT.replace("meter_models: []", "meter_models: &a [*a]"), "alias *a is inside its own anchor"),
    "11 MB": (TEXT + "#" + "x" * 11_000_000 + "\n", "larger than 10 MB: not read"),
    "topic #": (TEXT.replace("topic: wanhu/acs/gate-s/swipe", "topic: '#'"),
                "card_readers[2].topic: '#' would also receive the gateway's own alerts"),
}


@pytest.mark.parametrize("case", list(NASTY))
def test_cli_lists_the_nastiest_as_problems(tmp_path, case):
    text, expected = NASTY[case]
    assert text != TEXT, "the mutation no longer applies to the example site"
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-2000:]
    assert expected in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].endswith(f"problem(s) in {path}")
