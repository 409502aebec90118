"""Pydantic v2 models of the site file's `rules:` section (a list of rules, `kind` discriminated).

Same house style as gateway/config.py: unknown keys are errors, models are frozen, limits are
checked by Field constraints so the error names the key. `check_rules(data)` runs the checks
across sections (unique rule ids, meters / doors / routes / readers that exist) on the raw site
data and returns one plain line per problem with its path (`rules[3].meters[0]: no meter named
'B99-stair'`). `example_rules()` is the reference site's rule set, as data.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..circuit_ratings import MAX_POWER_KW, OVERLOAD_A

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
Circuit = Literal["stairwell_lighting", "street_lighting", "lift", "pump", "gate", "main_supply", "other"]
Severity = Literal["info", "warning", "critical"]
HHMM = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _RuleBase(_Strict):
    id: Id
    severity: Severity = "warning"
    enabled: bool = True
    renotify_s: float | None = Field(default=None, ge=10, le=86400,
                                     description="unacknowledged alerts are announced again this often; "
                                                 "default 900 s for critical, never for others")


class _MeterSelect(_RuleBase):
    """Which meters: every non-empty selector must match (meters by id, circuits, buildings);
    all empty means every enabled meter."""
    meters: list[str] = Field(default_factory=list)
    circuits: list[Circuit] = Field(default_factory=list)
    buildings: list[str] = Field(default_factory=list)


class ThresholdRule(_MeterSelect):
    """A reading field above / below a limit for `for_s` seconds. Exactly at a limit is fine;
    it clears once back inside by `hysteresis` (in the field's unit)."""
    kind: Literal["threshold"]
    field: str | list[str]                      # several: per-phase fields, one alert per meter
    above: float | None = None
    below: float | None = None
    hysteresis: float = Field(default=0.0, ge=0)
    for_s: float = Field(default=0.0, ge=0, le=86400)
    require: dict[str, float] = Field(default_factory=dict,
                                      description="judge only while these fields are at least this "
                                                  "(e.g. current_a: 0.5 for power factor)")

    @model_validator(mode="after")
    def _limits(self) -> "ThresholdRule":
        if self.above is None and self.below is None:
            raise ValueError("a threshold needs 'above', 'below' or both")
        if self.above is not None and self.below is not None:
            if self.below + self.hysteresis >= self.above - self.hysteresis:
                raise ValueError(f"below ({self.below}) and above ({self.above}) leave no room for "
                                 f"the hysteresis of {self.hysteresis}")
        return self

    def fields(self) -> list[str]:
        return [self.field] if isinstance(self.field, str) else list(self.field)


class OfflineRule(_MeterSelect):
    """A meter with no good reading for `periods` poll periods (or reported offline) is down;
    every meter of a bus down (or the bus reported offline) is one bus alert instead."""
    kind: Literal["offline"]
    periods: float = Field(default=3, ge=1, le=1000)
    settle_periods: float = Field(default=1, ge=0, le=100,
                                  description="a meter alert waits this many periods, so that a dead "
                                              "bus is recognised before its meters are reported")
    bus_alarm: bool = True


class CounterRule(_MeterSelect):
    """An energy counter that went backwards (without a recorded replacement), or rose more than
    the circuit's maximum power could deliver in the elapsed time."""
    kind: Literal["counter"]
    field: str = "energy_kwh"
    max_power_kw: float | None = Field(default=None, gt=0)
    max_power_kw_by_circuit: dict[Circuit, float] = Field(default_factory=dict)
    max_power_kw_by_meter: dict[str, float] = Field(default_factory=dict)
    resolution_kwh: float = Field(default=0.01, ge=0, description="the counter's last digit: a jump "
                                                                  "within it is never implausible")


class DaylightRule(_MeterSelect):
    """Lighting circuits on in daylight (sunrise + margin .. sunset - margin), or off after dusk
    (sunset + margin .. next sunrise - margin, or until `night_until`)."""
    kind: Literal["daylight"]
    circuits: list[Circuit] = Field(default_factory=lambda: ["street_lighting"])
    field: str = "power_kw"
    on_above: float = Field(default=0.05, ge=0, description="the circuit counts as lit above this")
    margin_minutes: float = Field(default=30, ge=0, le=240)
    check: Literal["both", "lit_in_daylight", "dark_after_dusk"] = "both"
    night_until: HHMM | None = None             # half-night lighting: lights may go off from here
    for_s: float = Field(default=300, ge=0, le=86400)


class Window(_Strict):
    start: HHMM
    end: HHMM


class ConsumptionRule(_MeterSelect):
    """A circuit's kWh in a daily window (night, or the whole day) against its own trailing
    baseline: more than `factor` × the median of the last `baseline_days` windows."""
    kind: Literal["consumption"]
    period: Literal["night", "day"] = "night"
    night: Window = Window(start="23:00", end="05:00")
    factor: float = Field(default=1.5, gt=1, le=100)
    baseline_days: int = Field(default=14, ge=3, le=90)
    min_days: int = Field(default=7, ge=1, le=90)
    min_excess_kwh: float = Field(default=0.5, ge=0, description="ignore excesses smaller than this")
    field: str = "energy_kwh"

    @model_validator(mode="after")
    def _days(self) -> "ConsumptionRule":
        if self.min_days > self.baseline_days:
            raise ValueError(f"min_days ({self.min_days}) is more than baseline_days ({self.baseline_days})")
        return self


class AccessRule(_RuleBase):
    """Card swipes at doors: `invalid_card` (category in `categories`), `staff_hours` (a staff card
    outside start..end, site time), `denied_burst` (`count` denied swipes in `window_s` at one
    door). The alert is per door and clears after `quiet_s` without a new case."""
    kind: Literal["access"]
    check: Literal["invalid_card", "staff_hours", "denied_burst"]
    doors: list[str] = Field(default_factory=list)
    categories: list[Literal["unknown", "revoked", "expired"]] = Field(
        default_factory=lambda: ["unknown", "revoked", "expired"])
    hours: Window | None = None                 # staff_hours
    roles: list[str] = Field(default_factory=list, description="staff_hours: only these roles (empty: all)")
    count: int = Field(default=5, ge=2, le=1000)
    window_s: float = Field(default=120, gt=0, le=86400)
    quiet_s: float = Field(default=300, ge=0, le=86400)

    @model_validator(mode="after")
    def _hours(self) -> "AccessRule":
        if self.check == "staff_hours" and self.hours is None:
            raise ValueError("check 'staff_hours' needs 'hours: {start: HH:MM, end: HH:MM}'")
        return self


class DoorRule(_RuleBase):
    """`forced_open` (clears when the door closes) or `held_open` (open longer than `held_open_s`,
    default the door's own `held_open_s`; clears when it closes)."""
    kind: Literal["door"]
    check: Literal["forced_open", "held_open"]
    doors: list[str] = Field(default_factory=list)
    held_open_s: float | None = Field(default=None, gt=0, le=86400)


class PatrolRule(_RuleBase):
    """Rounds of the routes judged against their schedule (see gateway/rules/patrol.py)."""
    kind: Literal["patrol"]
    routes: list[str] = Field(default_factory=list)
    readers: list[str] = Field(default_factory=list, description="the readers used on these routes "
                                                                 "(empty: any reader)")
    tolerance_minutes: float | None = Field(default=None, ge=0, le=120, description="default: the route's")
    wand_wait_hours: float = Field(default=12, gt=0, le=168,
                                   description="a wand route whose wand is not downloaded this long after "
                                               "a round is reported as a reader problem")
    settle_s: float = Field(default=30, ge=0, le=3600, description="a download is judged this long after "
                                                                   "its last read arrived")
    wand_lookback_hours: float = Field(default=24, gt=0, le=168,
                                       description="a wand download judges the rounds that ended at most "
                                                   "this long before it (older ones are not reported)")
    checks: list[Literal["not_started", "missed", "late", "early", "out_of_order"]] = Field(
        default_factory=lambda: ["not_started", "missed", "late", "early", "out_of_order"])


Rule = Annotated[Union[ThresholdRule, OfflineRule, CounterRule, DaylightRule, ConsumptionRule, AccessRule,
                       DoorRule, PatrolRule], Field(discriminator="kind")]
RULE_KINDS = ("threshold", "offline", "counter", "daylight", "consumption", "access", "door", "patrol")


def parse_rules(data: Any) -> list[Rule]:
    """Validate a `rules:` list on its own (the site file hooks `rules: list[Rule]` instead)."""
    from pydantic import TypeAdapter
    return TypeAdapter(list[Rule]).validate_python(data or [])


def check_rules(data: dict) -> list[str]:
    """Checks across sections on the raw site data (they run even when some entries are invalid).
    Only text values are looked up: a list or mapping where a name belongs is already a problem
    from the models (and cannot be looked up in a set)."""
    problems: list[str] = []
    rules = data.get("rules")
    if not isinstance(rules, list):
        return problems

    def texts(seq: Any, key: str = "id") -> set[str]:
        return {v for x in seq if isinstance(x, dict) and isinstance(v := x.get(key), str)} \
            if isinstance(seq, list) else set()

    meters = texts(data.get("meters"))
    buildings = texts(data.get("meters"), "building")
    doors = texts(data.get("doors"))
    patrol = data.get("patrol") if isinstance(data.get("patrol"), dict) else {}
    routes, readers = texts(patrol.get("routes")), texts(patrol.get("readers"))
    seen: dict[str, int] = {}
    for i, r in enumerate(rules):
        if not isinstance(r, dict):
            continue
        rid = r.get("id")
        if isinstance(rid, str):
            if rid in seen:
                problems.append(f"rules[{i}].id: '{rid}' is already used by rules[{seen[rid]}]")
            seen.setdefault(rid, i)
        for key, known, what in (("meters", meters, "meter"), ("buildings", buildings, "building"),
                                 ("doors", doors, "door"), ("routes", routes, "route"),
                                 ("readers", readers, "patrol reader")):
            vals = r.get(key)
            if not isinstance(vals, list):
                continue
            for j, v in enumerate(vals):
                if isinstance(v, str) and v not in known:
                    problems.append(f"rules[{i}].{key}[{j}]: no {what} named '{v}'")
        vals = r.get("max_power_kw_by_meter")
        if isinstance(vals, dict):
            for v in vals:
                if isinstance(v, str) and v not in meters:
                    problems.append(f"rules[{i}].max_power_kw_by_meter.{v}: no meter named '{v}'")
    return problems


# ---- the reference site ---------------------------------------------------------------------

# GB/T 12325-2008: 220 V single-phase supply may deviate +7 % / -10 % of nominal.
NOMINAL_V = 220.0
VOLTAGE_HIGH_V = round(NOMINAL_V * 1.07, 1)   # 235.4
VOLTAGE_LOW_V = round(NOMINAL_V * 0.90, 1)    # 198.0
PHASE_VOLTAGES = ["voltage_v", "voltage_l1_v", "voltage_l2_v", "voltage_l3_v"]


def example_rules(routes: dict[str, list[str]] | None = None) -> list[dict]:
    """The reference site's rule set as it would be written under `rules:` in the site file.
    `routes` maps route id -> its patrol readers (default: the reference site's assignment)."""
    routes = routes if routes is not None else {"north": ["pr-1"], "south": ["pr-2"],
                                                "perimeter": ["wand-1", "wand-2"]}
    rules: list[dict] = [
        {"id": "voltage-high", "kind": "threshold", "severity": "warning", "field": PHASE_VOLTAGES,
         "above": VOLTAGE_HIGH_V, "hysteresis": 2.0, "for_s": 60},
        {"id": "voltage-low", "kind": "threshold", "severity": "warning", "field": PHASE_VOLTAGES,
         "below": VOLTAGE_LOW_V, "hysteresis": 2.0, "for_s": 60},
    ]
    for circuit, amps in OVERLOAD_A.items():
        rules.append({"id": f"overload-{circuit.replace('_', '-')}", "kind": "threshold", "severity": "critical",
                      "circuits": [circuit], "field": ["current_a", "current_l1_a", "current_l2_a", "current_l3_a"],
                      "above": float(amps), "hysteresis": round(amps * 0.05, 1), "for_s": 30})
    rules += [
        {"id": "low-pf", "kind": "threshold", "severity": "info", "field": "pf", "below": 0.8,
         "hysteresis": 0.02, "for_s": 600, "require": {"power_kw": 0.1}},  # every model has power_kw
        {"id": "meter-offline", "kind": "offline", "severity": "warning", "periods": 3},
        {"id": "counter", "kind": "counter", "severity": "critical",
         "max_power_kw_by_circuit": dict(MAX_POWER_KW)},
        {"id": "lights-daylight", "kind": "daylight", "severity": "warning", "circuits": ["street_lighting"],
         "margin_minutes": 30, "check": "both", "for_s": 300},
        {"id": "night-consumption", "kind": "consumption", "severity": "warning", "period": "night",
         "factor": 1.5, "baseline_days": 14},
        {"id": "daily-consumption", "kind": "consumption", "severity": "info", "period": "day",
         "factor": 1.5, "baseline_days": 14},
        {"id": "bad-card", "kind": "access", "severity": "warning", "check": "invalid_card"},
        {"id": "denied-burst", "kind": "access", "severity": "critical", "check": "denied_burst",
         "count": 5, "window_s": 120},
        {"id": "staff-hours", "kind": "access", "severity": "info", "check": "staff_hours",
         "hours": {"start": "06:00", "end": "22:00"}},
        {"id": "door-forced", "kind": "door", "severity": "critical", "check": "forced_open"},
        {"id": "door-held", "kind": "door", "severity": "warning", "check": "held_open", "held_open_s": 60},
    ]
    for route, readers in routes.items():
        rules.append({"id": f"patrol-{route}", "kind": "patrol", "severity": "warning", "routes": [route],
                      "readers": list(readers)})
    return rules

