"""The site file: pydantic v2 models, loading, and every check a person needs to fix a file.

This is the only module that knows YAML keys. `load_site(path)` returns a `SiteConfig` or
raises `ConfigError` whose `problems` are one plain line each, with the path of the key
(`meters[12].bus: no bus named 'rs485-x'`).
"""

from __future__ import annotations

import re
import reprlib
import zoneinfo
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr, Tag,
                      ValidationError, field_validator, model_validator)

from .identity import EXAMPLE_SITE_ID
from .meter_models import SHIPPED_MODELS_DIR, MeterModel, load_dlt645_models, load_models
from .mqtt_topics import alert_topics, filter_problem, filters_overlap, prefix_problem
from .rules.models import RULE_KINDS, Rule, check_rules
from .yamlfile import YamlFileError, read_yaml_file

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
CIRCUITS = ("stairwell_lighting", "street_lighting", "lift", "pump", "gate", "main_supply", "other")
SECRET_WORDS = ("password", "token", "secret", "api_key", "apikey")

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxdict = _repr.maxtuple = _repr.maxset = 4
_repr.maxlevel = 2


def _show(value: Any) -> str:
    """A value as written, cut short: one problem stays one readable line."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"  # repr() may refuse it
    return _repr.repr(value)


def _one_line(line: str, most: int = 500) -> str:
    """A problem as one line of bounded length, whatever text the file put into it."""
    line = re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], line)
    return line if len(line) <= most else line[:most - 3] + "..."


def _checked(problem_of) -> AfterValidator:
    """A validator from a function that says what is wrong with a text (None: nothing)."""
    def check(value: str) -> str:
        problem = problem_of(value)
        if problem:
            raise ValueError(f"{_show(value)}: {problem}")
        return value
    return AfterValidator(check)


PathText = Annotated[str, _checked(lambda v: "a file name cannot contain a NUL character" if "\x00" in v else None)]
TopicFilter = Annotated[str, _checked(filter_problem)]   # what a reader or door subscribes
TopicPrefix = Annotated[str, _checked(prefix_problem)]   # where the gateway publishes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteInfo(_Strict):
    id: Id
    name: str
    timezone: str = "Asia/Shanghai"
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone '{v}' (use an IANA name such as Asia/Shanghai)") from None
        return v


class Storage(_Strict):
    path: PathText = "var/gateway.db"
    commit_interval_s: float = Field(default=1.0, gt=0, le=60)
    # retention and disk care (gateway/ledger/retention.py; README "Storage care")
    raw_days: int = Field(default=62, ge=31, le=36500, description="readings (every field) are kept this many "
                          "days; older months keep only the energy counters billing needs (at least a month: the "
                          "month just ended stays whole until it is billed)")
    energy_years: float = Field(default=10, gt=0, le=100, description="energy counters are kept this many years")
    events_days: int = Field(default=400, ge=1, le=36500, description="statuses, swipes, door events, patrol "
                             "checkins and alert history are kept this many days")
    retention_every_h: float = Field(default=1.0, gt=0, le=168)
    min_free_mb: float = Field(default=200, ge=0, description="below this free space on the ledger's filesystem: "
                               "an error, a storage status and the InfluxDB outbox shed")
    floor_free_mb: float = Field(default=50, ge=0, description="below this the ledger stops writing and holds "
                                 "readings in memory until space is back")
    hold_max_mb: float = Field(default=64, gt=0, le=4096, description="memory for readings held while the ledger "
                               "cannot write")

    @model_validator(mode="after")
    def _limits_in_order(self) -> "Storage":
        if self.floor_free_mb > self.min_free_mb:
            raise ValueError(f"floor_free_mb ({self.floor_free_mb}) must not be above min_free_mb "
                             f"({self.min_free_mb})")
        if self.energy_years * 365 < self.raw_days:
            raise ValueError(f"energy_years ({self.energy_years}) must cover raw_days ({self.raw_days})")
        return self


class _BusBase(_Strict):
    id: Id
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    retries: int = Field(default=1, ge=0, le=5, description="re-asks after a garbled answer; a silent meter is never re-asked in the same poll")
    pause_ms: float = Field(default=0, ge=0, le=5000, description="quiet time between requests")
    max_gap_registers: int = Field(default=32, ge=0, le=124)
    offline_after: int = Field(default=3, ge=1, le=100)
    backoff_max_s: float = Field(default=300, ge=1, le=3600)


class ModbusTcpBus(_BusBase):
    type: Literal["modbus_tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    framer: Literal["socket", "rtu"] = "socket"


class ModbusRtuBus(_BusBase):
    type: Literal["modbus_rtu"]
    port: PathText
    baudrate: int = Field(default=9600, ge=300, le=921600)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


class Dlt645Bus(_BusBase):
    """A DL/T 645-2007 line on a serial port; its meters are named by 12-digit `address`."""

    type: Literal["dlt645"]
    port: PathText
    baudrate: int = Field(default=2400, ge=300, le=921600)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    preamble: int = Field(default=4, ge=0, le=4, description="FE wake-up bytes sent before each request")


Bus = Annotated[Union[ModbusTcpBus, ModbusRtuBus, Dlt645Bus], Field(discriminator="type")]
BUS_TYPES = ("modbus_tcp", "modbus_rtu", "dlt645")
UNION_TAGS = BUS_TYPES + ("serial", "mqtt", "wand", "modbus") + RULE_KINDS


class Meter(_Strict):
    id: Id
    name: str = ""
    bus: str
    unit: int | None = Field(default=None, ge=1, le=247, description="Modbus unit id (Modbus buses only)")
    address: str | None = Field(default=None, pattern=r"^[0-9]{12}$",
                                description="DL/T 645 address, 12 digits in quotes (dlt645 buses only)")
    model: str
    poll_s: float = Field(default=30, ge=1, le=86400)
    timeout_s: float | None = Field(default=None, gt=0, le=30)
    circuit: Literal["stairwell_lighting", "street_lighting", "lift", "pump", "gate",
                     "main_supply", "other"] = "other"
    building: str | None = None
    unit_no: str | None = None      # the building's unit (单元) a meter serves, for unit groups
    enabled: bool = True
    max_power_kw: float | None = Field(default=None, gt=0, description="the circuit's maximum power; "
                                       "default from allocation.max_power_kw_by_circuit")
    counter_max_kwh: Decimal | None = Field(default=None, gt=0, description="the counter wraps to 0 after "
                                            "this value; default from the meter model")

    @field_validator("address", mode="before")
    @classmethod
    def _address_text(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(f"write the 12-digit address in quotes, e.g. address: '{v:012d}' (without quotes "
                             "YAML reads a number and drops the leading zeros)")
        return v

    @property
    def bus_address(self) -> str:
        """Where the meter is on its bus, for people: 'unit 3' or 'address 000012345678'."""
        return f"address {self.address}" if self.address is not None else f"unit {self.unit}"


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class InfluxConfig(_Strict):
    """Where time series go. Version 2 means the /api/v2/write API (InfluxDB 2.x, 3.x and
    compatible engines); version 1 means InfluxDB 1.x's /write endpoint."""

    version: Literal[1, 2] = 2
    url: str = Field(pattern=r"^https?://[^\s/]+")
    org: str | None = None
    bucket: str | None = None
    token_env: EnvName | None = None
    database: str | None = None
    retention_policy: str | None = None
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    ca_file: PathText | None = None
    verify_tls: bool = True
    timeout_s: float = Field(default=10, gt=0, le=300)
    gzip: bool = True
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    batch_age_s: float = Field(default=5, ge=0, le=3600)
    max_in_flight: int = Field(default=2, ge=1, le=8)
    backoff_max_s: float = Field(default=300, ge=1, le=3600)
    outbox_max_mb: float = Field(default=1024, gt=0)
    stats_interval_s: float = Field(default=60, ge=1, le=3600)

    @model_validator(mode="after")
    def _keys_of_the_version(self) -> "InfluxConfig":
        need = ("org", "bucket") if self.version == 2 else ("database",)
        foreign = ("database", "retention_policy", "username_env", "password_env") if self.version == 2 \
            else ("org", "bucket", "token_env")
        missing = [k for k in need if not getattr(self, k)]
        wrong = [k for k in foreign if getattr(self, k) is not None]
        problems = []
        if missing:
            problems.append(f"version {self.version} needs {', '.join(missing)}")
        if wrong:
            problems.append(f"{', '.join(wrong)} belong(s) to version {3 - self.version}, not {self.version}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class MqttConfig(_Strict):
    host: str
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: Id | None = None  # default: estate-gateway-<site id>; fixed, for a persistent session
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    tls: bool = False
    ca_file: PathText | None = None
    keepalive_s: int = Field(default=30, ge=5, le=600)
    # how often the box says who it is on `<site>/gateway/info` (gateway/identity.py); another box
    # on the same site id counts as present for 3 × this after its last announcement
    announce_s: float = Field(default=60, ge=0.5, le=3600)


class _SerialLine(_Strict):
    port: PathText
    baudrate: int = Field(default=9600, ge=300, le=921600)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


class SerialCardReader(_SerialLine):
    id: Id
    type: Literal["serial"]
    format: Literal["rdm6300", "wiegand_text", "pattern"] = "rdm6300"
    encoding: Literal["hex_raw", "hex", "decimal", "fac_card"] = "decimal"  # wiegand_text only
    bits: Literal[26, 34] = 26                                               # wiegand_text decimal
    pattern: str | None = None     # format pattern: a regex with a named group 'card'
    base: Literal[10, 16] = 10     # format pattern
    door: Id
    direction: Literal["in", "out", ""] = ""
    debounce_s: float = Field(default=2.0, ge=0, le=60)

    @model_validator(mode="after")
    def _pattern(self) -> "SerialCardReader":
        if self.format == "pattern":
            if not self.pattern:
                raise ValueError("format 'pattern' needs a 'pattern' with a named group (?P<card>...)")
            try:
                if "card" not in re.compile(self.pattern).groupindex:
                    raise ValueError("the pattern has no named group (?P<card>...)")
            except re.error as e:
                raise ValueError(f"pattern is not a valid regular expression: {e}") from None
        return self


class JsonMapping(_Strict):
    """Which JSON keys of a controller's message hold what (dotted paths allowed)."""
    card: str = "card"
    door: str = "door"
    reader: str = "reader"
    direction: str = "direction"
    time: str = "time"


class MqttCardReader(_Strict):
    id: Id
    type: Literal["mqtt"]
    topic: TopicFilter
    door: Id | None = None          # used when the message names no door
    direction: Literal["in", "out", ""] = ""
    card_format: Literal["decimal", "hex", "fac_card", "auto"] = "auto"
    mapping: JsonMapping = JsonMapping()
    debounce_s: float = Field(default=2.0, ge=0, le=60)
    # The readers the controller names in its messages (`reader`), e.g. [gate-s-in, gate-s-out]:
    # a message naming another is refused as bad input. A message naming none is this reader's.
    readers: list[Id] = Field(default_factory=list)


CardReader = Annotated[Union[SerialCardReader, MqttCardReader], Field(discriminator="type")]


class DoorEventMapping(_Strict):
    door: str = "door"
    event: str = "event"
    time: str = "time"


class Door(_Strict):
    id: Id
    name: str = ""
    topic: TopicFilter | None = None  # door events (opened/closed/forced_open/held_open) over MQTT
    mapping: DoorEventMapping = DoorEventMapping()
    event_names: dict[str, Literal["opened", "closed", "forced_open", "held_open"]] = Field(default_factory=dict)
    held_open_s: float = Field(default=60, gt=0, le=3600)


class CardEntry(_Strict):
    number: str
    holder: str = ""
    household: str = ""
    role: str = "resident"
    valid_from: str = ""
    valid_to: str = ""
    revoked: bool = False


class Cards(_Strict):
    """The card list: a CSV `file` (default cards.csv) and/or `entries` in the site file. With
    `entries` and no `file` the list is the entries alone: no cards.csv is looked for."""

    file: PathText | None = "cards.csv"
    entries: list[CardEntry] = Field(default_factory=list)
    hash_key_env: EnvName = "CARD_HASH_KEY"
    reload_s: float = Field(default=2.0, ge=0.2, le=3600)

    @model_validator(mode="before")
    @classmethod
    def _entries_alone(cls, data: Any) -> Any:
        if isinstance(data, dict) and "entries" in data and "file" not in data:
            return {**data, "file": None}
        return data


class Checkpoint(_Strict):
    id: Id
    tag: str = Field(pattern=r"^[0-9A-Fa-f]{4,20}$")
    name: str = ""


class MqttPatrolReader(_Strict):
    id: Id
    type: Literal["mqtt"]
    topic: TopicFilter
    mapping: dict[str, str] = Field(default_factory=lambda: {"guard": "guard", "tag": "tag", "time": "time",
                                                             "reader": "reader"})


class WandPatrolReader(_SerialLine):
    id: Id
    type: Literal["wand"]


PatrolReader = Annotated[Union[MqttPatrolReader, WandPatrolReader], Field(discriminator="type")]


class Shift(_Strict):
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    every_minutes: int = Field(ge=10, le=24 * 60)


class Route(_Strict):
    id: Id
    name: str = ""
    checkpoints: list[str] = Field(min_length=2)
    leg_minutes: float | list[float] = 5.0       # one value for every leg, or one per leg
    tolerance_minutes: float = Field(default=3.0, ge=0, le=120)
    shifts: list[Shift] = Field(min_length=1)

    @model_validator(mode="after")
    def _legs(self) -> "Route":
        if isinstance(self.leg_minutes, list) and len(self.leg_minutes) != len(self.checkpoints) - 1:
            raise ValueError(f"leg_minutes has {len(self.leg_minutes)} values for "
                             f"{len(self.checkpoints) - 1} legs")
        return self

    def legs(self) -> list[float]:
        n = len(self.checkpoints) - 1
        return list(self.leg_minutes) if isinstance(self.leg_minutes, list) else [self.leg_minutes] * n


class Patrol(_Strict):
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    readers: list[PatrolReader] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)


class Webhook(_Strict):
    name: Id
    url_env: EnvName                  # the URL carries the robot's key: a secret
    format: Literal["json", "wecom"] = "json"
    severities: list[Literal["info", "warning", "critical"]] = Field(default_factory=lambda: ["warning", "critical"])
    timeout_s: float = Field(default=10, gt=0, le=120)


class AlertOutputs(_Strict):
    mqtt_prefix: TopicPrefix | None = None   # default "<site id>/alerts"
    webhooks: list[Webhook] = Field(default_factory=list)


HHMM = r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$"


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


# A price per kWh outside this band is almost certainly a typo (8400 for 0.84, 0.05 for 0.50).
# Chinese residential prices lie near 0.5 yuan/kWh (Beijing 0.4883, Zhejiang 0.538 for the first
# tier when tiered pricing began on 1 July 2012; the higher tiers add 0.05 and 0.30: Xinhua /
# China Daily, 2 July 2012), and commercial time-of-use peaks stay below about 1.5; the
# prices of the site itself are not public (shared/domain/tariffs_allocation.md). The band is a
# factor of about five either way of those, so a real tariff never trips it and a slipped decimal
# point always does; `gateway check-config` warns, `gateway allocate` refuses without --force.
PLAUSIBLE_PRICE_MIN = Decimal("0.10")     # yuan per kWh
PLAUSIBLE_PRICE_MAX = Decimal("3.00")


def implausible_price(price: Decimal) -> bool:
    return not PLAUSIBLE_PRICE_MIN <= price <= PLAUSIBLE_PRICE_MAX


class Tariff(_Strict):
    """One price list with its validity (local dates; `valid_until` is the first day it no longer
    applies). Flat: `price`. Time of use: `prices` per period and the `periods` of the day."""

    name: str
    valid_from: date
    valid_until: date | None = None
    price: Decimal | None = Field(default=None, ge=0, decimal_places=6)
    prices: dict[Id, Decimal] = Field(default_factory=dict)
    periods: dict[Id, list[Annotated[str, Field(pattern=r"^\d\d:\d\d-\d\d:\d\d$")]]] = Field(default_factory=dict)
    # Prices copied from an example, not from the estate's own bill: every report that uses this
    # tariff says so in a banner until someone puts the real prices in and removes the mark.
    placeholder: bool = False

    @model_validator(mode="after")
    def _shape(self) -> "Tariff":
        if self.valid_until is not None and self.valid_until <= self.valid_from:
            raise ValueError(f"valid_until {self.valid_until} is not after valid_from {self.valid_from}")
        if (self.price is None) == (not self.prices):
            raise ValueError("give either 'price' (flat) or 'prices' with 'periods' (time of use)")
        if self.price is not None:
            if self.periods:
                raise ValueError("a flat tariff ('price') has no 'periods'")
            return self
        if set(self.prices) != set(self.periods):
            raise ValueError(f"'prices' ({', '.join(sorted(self.prices))}) and 'periods' "
                             f"({', '.join(sorted(self.periods))}) must name the same periods")
        for name, p in self.prices.items():
            if p < 0:
                raise ValueError(f"prices.{name}: a price cannot be negative")
        owner = self.period_of_minute()
        if "" in owner:
            m = owner.index("")
            raise ValueError(f"periods do not cover the whole day: {m // 60:02d}:{m % 60:02d} has no period")
        return self

    def period_of_minute(self) -> list[str]:
        """The period name of each minute of the day (0..1439; '' where none); 'flat' for a
        one-price tariff. A malformed or overlapping span is a ValueError."""
        if self.price is not None:
            return ["flat"] * 1440
        owner = [""] * 1440
        for name, spans in self.periods.items():
            for span in spans:
                a, b = span.split("-")
                if not (re.match(HHMM, a) and re.match(HHMM, b)) or _minutes(a) >= _minutes(b):
                    raise ValueError(f"periods.{name}: '{span}' is not a span of the day such as 08:00-10:00")
                for m in range(_minutes(a), _minutes(b)):
                    if owner[m]:
                        raise ValueError(f"periods.{name}: {span} overlaps period '{owner[m]}'")
                    owner[m] = name
        return owner

    def price_of(self, period: str) -> Decimal:
        return self.price if self.price is not None else self.prices[period]

    def named_prices(self) -> list[tuple[str, Decimal]]:
        """(period, price) of every price of the tariff; 'flat' for a one-price tariff."""
        return [("flat", self.price)] if self.price is not None else sorted(self.prices.items())


class AllocationGroup(_Strict):
    """Meters whose cost a set of households shares. `scope: building` (or `unit`) with
    `circuits` and no `building` expands into one group per building (or unit) that has such
    meters; `meters` names meters explicitly."""

    id: Id
    name: str = ""
    scope: Literal["estate", "building", "unit"] = "estate"
    building: str | None = None
    unit: str | None = None
    circuits: list[Literal["stairwell_lighting", "street_lighting", "lift", "pump", "gate", "other"]] = \
        Field(default_factory=list)
    meters: list[str] = Field(default_factory=list)
    key: Literal["area", "household", "fixed"] = "area"
    vacant: Literal["include", "exclude"] = "include"
    shares: dict[str, Decimal] = Field(default_factory=dict, description="household id -> share, key 'fixed'")

    @model_validator(mode="after")
    def _shape(self) -> "AllocationGroup":
        if not self.circuits and not self.meters:
            raise ValueError("a group needs 'circuits' or 'meters'")
        if self.key == "fixed" and not self.shares:
            raise ValueError("key 'fixed' needs 'shares' (household id -> share)")
        if self.key != "fixed" and self.shares:
            raise ValueError(f"'shares' is only used with key 'fixed', not '{self.key}'")
        if any(v < 0 for v in self.shares.values()) or (self.shares and sum(self.shares.values()) <= 0):
            raise ValueError("shares must be non-negative and not all zero")
        if self.scope == "estate" and (self.building or self.unit):
            raise ValueError("an estate group has no 'building' or 'unit'")
        if self.unit and not self.building:
            raise ValueError("'unit' needs 'building'")
        return self


def _buildings(value: Any) -> Any:
    """`buildings: [B01, B02]` or `buildings: {B01: [1, 2], B02: []}`: building -> its units as
    text (YAML reads an unquoted 1 as a number; a unit is written 1 as often as '1')."""
    def text(x: Any) -> Any:
        return str(x) if isinstance(x, int) and not isinstance(x, bool) else x
    if isinstance(value, list):
        return {text(b): [] for b in value}
    if isinstance(value, dict):
        return {text(b): [text(u) for u in us] if isinstance(us, list) else [] if us is None else us
                for b, us in value.items()}
    return value


class Allocation(_Strict):
    households_file: PathText = "households.csv"
    buildings: Annotated[dict[str, list[str]], BeforeValidator(_buildings)] = Field(
        default_factory=dict, description="the estate's buildings, each with its units when they are to be "
                                          "checked; by default the buildings the meters and groups name")
    groups: list[AllocationGroup] = Field(default_factory=list)
    difference_rule: Literal["by_cost", "by_area"] = Field(
        default="by_cost", description="how bill - metered cost is spread: pro rata to each group's metered "
                                       "cost, or over all households by floor area")
    gap_minutes: float = Field(default=20, ge=1, le=24 * 60, description="readings further apart than this "
                                                                         "are a gap: interpolated and flagged")
    max_power_kw_by_circuit: dict[str, float] = Field(default_factory=dict)
    resolution_kwh: Decimal = Field(default=Decimal("0.01"), ge=0)
    min_coverage: Decimal = Field(default=Decimal("0.95"), ge=0, le=1,
                                  description="a month is allocated only when every billed meter's counters "
                                              "measure at least this part of it (else --allow-partial)")
    bill_tolerance: Decimal = Field(default=Decimal("0.20"), gt=0,
                                    description="how far the bill may differ from the metered cost and from the "
                                                "main meter's cost, as a fraction of each (else --force)")
    # The comparison with last month flags a group or household whose amount moved by more than
    # this fraction (0.30: ±30 %): a jump that size is worth a look before the bills go out.
    change_band: Decimal = Field(default=Decimal("0.30"), gt=0,
                                 description="flag a group or household whose amount differs from last month's "
                                             "by more than this fraction")


ROLES = ("guard", "electrician", "accountant", "admin")


class User(_Strict):
    """A console user; `password_hash` is an argon2 hash written by `gateway users add`."""

    name: Id
    role: Literal["guard", "electrician", "accountant", "admin"]
    password_hash: str = Field(pattern=r"^\$argon2(id|i|d)\$")
    display_name: str = ""


class Web(_Strict):
    """The guard-room console, served by the gateway process."""

    enabled: bool = True
    bind: str = Field(default="127.0.0.1", description="the address to listen on: 0.0.0.0 for the estate's Wi-Fi")
    port: int = Field(default=8080, ge=1, le=65535)
    tls_cert: PathText | None = None
    tls_key: PathText | None = None
    session_hours: float = Field(default=12, gt=0, le=24 * 30)     # a session ends this long after login
    # ... and after this long without a request (an open console page asks every 15 s)
    idle_minutes: float = Field(default=30, gt=0, le=24 * 60)
    session_key_env: EnvName | None = None    # default: a random key in the key file beside the ledger
    language: Literal["zh", "en"] = "zh"

    @model_validator(mode="after")
    def _tls(self) -> "Web":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        return self


# ---- public lighting (gateway/lighting/) ----------------------------------------------------

class ModbusOutput(_Strict):
    """A relay or contactor output on a Modbus relay module. Most modules expose outputs as coils
    (read FC01, write FC05); some as holding registers (read FC03, write FC06) where `on_value`
    means on. `inverted`: the output is wired so that energised means the lights are off."""

    id: Id
    name: str = ""
    type: Literal["modbus"] = "modbus"
    bus: str
    unit: int = Field(ge=1, le=247)
    kind: Literal["coil", "holding"] = "coil"
    address: int = Field(ge=0, le=65535)
    inverted: bool = False
    on_value: int = Field(default=1, ge=0, le=65535, description="holding registers: the value that means on")
    off_value: int = Field(default=0, ge=0, le=65535, description="holding registers: the value that means off")

    @model_validator(mode="after")
    def _values(self) -> "ModbusOutput":
        if self.on_value == self.off_value:
            raise ValueError(f"on_value and off_value are both {self.on_value}: the output could not be read back")
        if self.kind == "coil" and (self.on_value, self.off_value) != (1, 0):
            raise ValueError("on_value/off_value are for kind: holding (a coil is on or off)")
        return self


def _topic_name(value: str) -> str | None:
    from .mqtt_topics import name_problem
    return name_problem(value)


TopicName = Annotated[str, _checked(_topic_name)]


class MqttOutput(_Strict):
    """A smart switch on MQTT: the gateway publishes `payload_on`/`payload_off` to
    `command_topic` and reads the switch's state back from `state_topic`."""

    id: Id
    name: str = ""
    type: Literal["mqtt"]
    command_topic: TopicName
    state_topic: TopicFilter
    payload_on: str = "ON"
    payload_off: str = "OFF"
    state_on: str | None = None      # default: payload_on
    state_off: str | None = None     # default: payload_off
    inverted: bool = False

    @model_validator(mode="after")
    def _payloads(self) -> "MqttOutput":
        if self.payload_on == self.payload_off:
            raise ValueError("payload_on and payload_off must differ")
        if (self.state_on or self.payload_on) == (self.state_off or self.payload_off):
            raise ValueError("state_on and state_off must differ")
        return self


def _output_type(v: Any) -> str:
    t = v.get("type", "modbus") if isinstance(v, dict) else getattr(v, "type", "modbus")
    return t if t in ("modbus", "mqtt") else "modbus"


Output = Annotated[Union[Annotated[ModbusOutput, Tag("modbus")], Annotated[MqttOutput, Tag("mqtt")]],
                   Discriminator(_output_type)]

_MOMENT = re.compile(r"^(?:(?P<sun>sunset|sunrise)\s*(?:(?P<sign>[+-])\s*(?P<off>\d{1,3}))?|"
                     r"(?P<h>[01]\d|2[0-3]):(?P<m>[0-5]\d))$")
MAX_SUN_OFFSET_MIN = 120


def parse_moment(text: str) -> tuple[str, int]:
    """'sunset+15' -> ('sunset', 15); 'sunrise-10' -> ('sunrise', -10); '18:30' -> ('fixed', 1110)
    (minutes after local midnight). ValueError with a line for people."""
    m = _MOMENT.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{_show(text)} is not a switching time: write sunset, sunset+15, sunrise-10 or 18:30")
    if m["sun"]:
        off = int(m["off"] or 0) * (-1 if m["sign"] == "-" else 1)
        if abs(off) > MAX_SUN_OFFSET_MIN:
            raise ValueError(f"{_show(text)}: an offset from {m['sun']} of at most {MAX_SUN_OFFSET_MIN} minutes")
        return m["sun"], off
    return "fixed", int(m["h"]) * 60 + int(m["m"])


def _evening(text: str) -> str:
    kind, v = parse_moment(text)
    if kind == "sunrise" or (kind == "fixed" and v < 13 * 60):
        raise ValueError(f"{_show(text)}: the lights go on in the evening: sunset±minutes or a time from 13:00 "
                         "to 23:59")
    return text


def _morning(text: str) -> str:
    kind, v = parse_moment(text)
    if kind == "sunset" or (kind == "fixed" and v >= 12 * 60):
        raise ValueError(f"{_show(text)}: the lights go off in the morning: sunrise±minutes or a time from 00:00 "
                         "to 11:59")
    return text


EveningTime = Annotated[str, AfterValidator(_evening)]
MorningTime = Annotated[str, AfterValidator(_morning)]
ClockTime = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
_SPAN = re.compile(r"^(\d{4}-\d\d-\d\d)(?:\.\.(\d{4}-\d\d-\d\d))?$")
_SEASON = re.compile(r"^(\d\d-\d\d)\.\.(\d\d-\d\d)$")


def parse_date_span(text: Any) -> tuple[date, date]:
    """'2027-02-05' or '2027-02-05..2027-02-20' (both days included)."""
    if isinstance(text, date):
        return text, text
    m = _SPAN.match(text) if isinstance(text, str) else None
    try:
        a = date.fromisoformat(m[1]) if m else None
        b = date.fromisoformat(m[2]) if m and m[2] else a
    except ValueError as e:
        raise ValueError(f"{_show(text)}: {e}") from None
    if a is None:
        raise ValueError(f"{_show(text)} is not a date or a span of dates (2027-02-05 or 2027-02-05..2027-02-20)")
    if b < a:
        raise ValueError(f"{_show(text)}: the span ends before it begins")
    return a, b


def parse_season(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """'11-01..03-31' -> ((11, 1), (3, 31)): every year, wrapping over the new year."""
    m = _SEASON.match(text) if isinstance(text, str) else None
    out = []
    for part in (m.groups() if m else ()):
        mm, dd = int(part[:2]), int(part[3:])
        try:
            date(2024, mm, dd)  # a leap year: 02-29 is a day
        except ValueError:
            m = None
            break
        out.append((mm, dd))
    if not m:
        raise ValueError(f"{_show(text)} is not a season: month-day..month-day, e.g. 11-01..03-31")
    return out[0], out[1]


def _span_text(v: Any) -> Any:
    return v.isoformat() if isinstance(v, date) else v


DateSpan = Annotated[str, BeforeValidator(_span_text), AfterValidator(lambda v: (parse_date_span(v), v)[1])]
Season = Annotated[str, AfterValidator(lambda v: (parse_season(v), v)[1])]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _no_bare_on_off(data: Any) -> Any:
    """YAML 1.1 reads a bare on/off/yes/no key as true/false: say which key was meant."""
    if isinstance(data, dict) and any(isinstance(k, bool) for k in data):
        raise ValueError("a key reads as true/false: YAML takes a bare on/off/yes/no as a boolean; write "
                         "lights_on / lights_off (curfew: from / until)")
    return data


class Curfew(_Strict):
    """Part of the lights off `from` a time (e.g. 23:30, or 00:30 after midnight) `until` a time
    before dawn (none: off until morning); `until` is skipped when dawn comes first."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    from_: ClockTime = Field(alias="from")
    until: ClockTime | None = None

    _bare = model_validator(mode="before")(classmethod(lambda cls, d: _no_bare_on_off(d)))


class _Switching(_Strict):
    mode: Literal["schedule", "always_on", "always_off"] | None = None
    lights_on: EveningTime | None = None
    lights_off: MorningTime | None = None
    curfew: Curfew | Literal["none"] | None = None

    _bare = model_validator(mode="before")(classmethod(lambda cls, d: _no_bare_on_off(d)))


class ScheduleException(_Switching):
    """A variant of a schedule for some nights, by the date of the evening. Every condition
    given must hold; the first exception that matches a night wins."""

    name: str = ""
    dates: list[DateSpan] = Field(default_factory=list)
    season: Season | None = None
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=list)
    holidays: list[Id] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_condition(self) -> "ScheduleException":
        if not (self.dates or self.season or self.weekdays or self.holidays):
            raise ValueError("an exception needs at least one of dates, season, weekdays, holidays")
        if self.mode is None and self.lights_on is None and self.lights_off is None and self.curfew is None:
            raise ValueError("an exception changes at least one of mode, lights_on, lights_off, curfew")
        return self


class LightingSchedule(_Switching):
    id: Id
    name: str = ""
    lights_on: EveningTime = "sunset"
    lights_off: MorningTime = "sunrise"
    exceptions: list[ScheduleException] = Field(default_factory=list)


class LightingCircuit(_Strict):
    id: Id
    name: str = ""
    outputs: list[str] = Field(min_length=1)
    meters: list[str] = Field(default_factory=list, description="the meters that measure the circuit")
    schedule: str
    idle_kw: float = Field(default=0.05, ge=0, description="power at or below which the circuit is off; above "
                           "it while commanded off: a stuck contactor or a manual bypass")
    lit_kw: float | None = Field(default=None, gt=0, description="power above which the circuit is lit "
                                 "(default: idle_kw); at or below it while commanded on: breaker tripped or lamps out")
    min_on_minutes: float | None = Field(default=None, ge=0, le=240)
    min_off_minutes: float | None = Field(default=None, ge=0, le=240)
    baseline: DateSpan | None = Field(default=None, description="the days before the schedule changed, "
                                      "the circuit's own baseline for what the schedule saves")


class Lighting(_Strict):
    holidays: dict[Id, list[DateSpan]] = Field(default_factory=dict, description="named nights, by the date of "
                                               "the evening; spring_festival is known (eve to Lantern Festival)")
    schedules: list[LightingSchedule] = Field(default_factory=list)
    circuits: list[LightingCircuit] = Field(default_factory=list)
    min_on_minutes: float = Field(default=10, ge=0, le=240)
    min_off_minutes: float = Field(default=10, ge=0, le=240)
    stagger_s: float = Field(default=2.0, ge=0, le=60, description="time between two circuits switched together")
    verify_s: float = Field(default=120, ge=5, le=3600, description="time the circuit's meter has to agree")
    settle_s: float = Field(default=3, ge=0, le=300, description="readings this soon after a switching are not "
                            "judged (lamps starting, the meter's averaging)")
    readback_retries: int = Field(default=3, ge=0, le=10)
    check_every_s: float = Field(default=60, ge=1, le=3600, description="how often every output is read back")
    timeout_s: float | None = Field(default=None, gt=0, le=30, description="per exchange; default the bus's")


class RepairCategory(_Strict):
    """A kind of repair and the service plan's targets for it (around the clock: electrical faults
    are answered at any hour)."""
    id: Id
    name: str
    name_en: str = ""
    respond_minutes: float = Field(gt=0, le=7 * 24 * 60, description="on site within this long of the report")
    repair_hours: float = Field(gt=0, le=90 * 24, description="done within this long of the report")
    severity: Literal["info", "warning", "critical"] = "warning"


class ChecklistItem(_Strict):
    id: Id
    name: str
    name_en: str = ""


class InspectionPlan(_Strict):
    """An inspection rhythm: one task per period, due at the period's end, with its checklist."""
    id: Id
    name: str
    name_en: str = ""
    every: Literal["week", "month", "quarter", "half_year", "year"]
    kinds: list[str] = Field(default_factory=list, description="equipment kinds it covers (the register's)")
    items: list[ChecklistItem] = Field(min_length=1)

    @field_validator("items")
    @classmethod
    def _unique_items(cls, items: list[ChecklistItem]) -> list[ChecklistItem]:
        seen = set()
        for i in items:
            if i.id in seen:
                raise ValueError(f"item {i.id!r} is listed twice")
            seen.add(i.id)
        return items


def _items(*pairs: tuple[str, str, str]) -> list[ChecklistItem]:
    return [ChecklistItem(id=i, name=n, name_en=e) for i, n, e in pairs]


def default_categories() -> list[RepairCategory]:
    """The service plan's repair categories (licensed electrician for electrical faults, at any hour)."""
    return [
        RepairCategory(id="electrical", name="电气照明", name_en="electrical and lighting", respond_minutes=30,
                       repair_hours=24),
        RepairCategory(id="water", name="给排水", name_en="water and pumps", respond_minutes=60, repair_hours=24),
        RepairCategory(id="lift", name="电梯", name_en="lifts", respond_minutes=30, repair_hours=24),
        RepairCategory(id="access", name="门禁道闸", name_en="access control and gates", respond_minutes=60,
                       repair_hours=24),
        RepairCategory(id="fire", name="消防", name_en="fire equipment", respond_minutes=30, repair_hours=24),
        RepairCategory(id="facility", name="公共设施", name_en="public facilities", respond_minutes=240,
                       repair_hours=72),
    ]


def default_inspections() -> list[InspectionPlan]:
    """The service plan's inspection rhythms (../shared/domain/maintenance.md)."""
    return [
        InspectionPlan(id="street_lights", name="路灯巡检", name_en="street lights", every="month",
                       kinds=["street_light", "lighting_circuit", "lighting_output"],
                       items=_items(("lamps", "灯具完好，坏灯已更换", "lamps working, broken ones replaced"),
                                    ("poles", "灯杆无损坏、无倾斜", "poles undamaged and upright"),
                                    ("cabinets", "配电箱及接线完好", "cabinets and wiring sound"))),
        InspectionPlan(id="stairwell_lights", name="楼道灯巡检", name_en="stairwell lights", every="quarter",
                       kinds=["lighting_circuit"],
                       items=_items(("lamps", "灯具完好", "lamps working"),
                                    ("switches", "开关、声控感应正常", "switches and sensors working"))),
        InspectionPlan(id="water_electrical", name="水电设备巡检", name_en="water and electrical equipment",
                       every="week", kinds=["pump", "lift", "bus", "serial_server"],
                       items=_items(("running", "运行状态正常", "running normally"),
                                    ("parameters", "电压、电流、压力等参数正常", "voltage, current, pressure normal"),
                                    ("upkeep", "清洁、润滑等保养已做", "cleaning and lubrication done"))),
        InspectionPlan(id="meters_lines", name="公共电表及线路巡检", name_en="public meters and lines", every="month",
                       kinds=["meter"],
                       items=_items(("meters", "电表运行、读数正常，铅封完好", "meters running, readings plausible, seals intact"),
                                    ("lines", "线路无老化、无发热、无私接", "lines not aged, not hot, no taps"),
                                    ("account", "与供电局电费账单核对", "checked against the utility bill"))),
        InspectionPlan(id="fitness", name="健身器材巡检", name_en="fitness equipment", every="half_year",
                       kinds=["fitness_equipment"],
                       items=_items(("loose", "部件无松动", "no loose parts"), ("damage", "无破损", "no damage"))),
        InspectionPlan(id="access", name="门禁系统巡检", name_en="access control", every="month",
                       kinds=["card_reader", "door"],
                       items=_items(("readers", "读卡器正常", "readers working"),
                                    ("doors", "门及闭门器正常", "doors and closers working"),
                                    ("cards", "卡记录已更新", "card records up to date"))),
        InspectionPlan(id="fire", name="消防设施巡检", name_en="fire equipment", every="month",
                       kinds=["fire_equipment"],
                       items=_items(("extinguishers", "灭火器压力及有效期正常", "extinguishers charged and in date"),
                                    ("hydrants", "消火栓完好", "hydrants sound"),
                                    ("exits", "安全出口及应急照明正常", "exits and emergency lights working"))),
    ]


class Maintenance(_Strict):
    """The estate's own work (gateway/maintenance/): repair targets, inspection rhythms."""
    categories: list[RepairCategory] = Field(default_factory=default_categories)
    inspections: list[InspectionPlan] = Field(default_factory=default_inspections)
    check_every_s: float = Field(default=60, ge=1, le=3600, description="how often targets and due inspections "
                                 "are looked at")
    photo_max_mb: float = Field(default=5, gt=0, le=50, description="largest inspection photo accepted")
    repeat_faults: int = Field(default=3, ge=2, le=100, description="orders for one device within repeat_days "
                               "that make it a repeat fault")
    repeat_days: int = Field(default=90, ge=1, le=3650)

    @field_validator("categories", "inspections")
    @classmethod
    def _unique_ids(cls, items: list) -> list:
        seen = set()
        for x in items:
            if x.id in seen:
                raise ValueError(f"id {x.id!r} is listed twice")
            seen.add(x.id)
        return items


class SiteConfig(_Strict):
    site: SiteInfo
    storage: Storage = Storage()
    meter_models: list[PathText] = Field(default_factory=list, description="extra model directories")
    buses: list[Bus] = Field(default_factory=list)
    meters: list[Meter] = Field(default_factory=list)
    influxdb: InfluxConfig | None = None
    mqtt: MqttConfig | None = None
    card_readers: list[CardReader] = Field(default_factory=list)
    doors: list[Door] = Field(default_factory=list)
    cards: Cards = Cards(file=None)
    patrol: Patrol = Patrol()
    rules: list[Rule] = Field(default_factory=list)
    alerts: "AlertOutputs" = Field(default_factory=lambda: AlertOutputs())
    tariffs: list[Tariff] = Field(default_factory=list)
    allocation: Allocation = Allocation()
    web: Web = Web()
    users: list[User] = Field(default_factory=list)
    outputs: list[Output] = Field(default_factory=list)
    lighting: Lighting = Field(default_factory=lambda: Lighting())
    maintenance: Maintenance = Field(default_factory=lambda: Maintenance())

    @field_validator("tariffs")
    @classmethod
    def _tariff_validity(cls, tariffs: list[Tariff]) -> list[Tariff]:
        """One tariff for every day from the first tariff's start: an overlap would price a day
        twice, and a day between two tariffs cannot be priced (a month touching it could not be
        allocated, and nothing would say so before then)."""
        order = sorted(range(len(tariffs)), key=lambda i: tariffs[i].valid_from)
        problems = []
        for i, j in zip(order, order[1:]):
            a, b = tariffs[i], tariffs[j]
            if a.valid_until is None or a.valid_until > b.valid_from:
                problems.append(f"'{a.name}' (from {a.valid_from}) overlaps '{b.name}' (from {b.valid_from}); give "
                                f"'{a.name}' a valid_until")
            elif a.valid_until < b.valid_from:
                last = b.valid_from - timedelta(days=1)
                days = a.valid_until.isoformat() + ("" if last == a.valid_until else f" to {last.isoformat()}")
                problems.append(f"no tariff for {days}: '{a.name}' (tariffs[{i}]) has valid_until {a.valid_until} "
                                f"(its last day is {a.valid_until - timedelta(days=1)}) and '{b.name}' "
                                f"(tariffs[{j}]) valid_from {b.valid_from}; give '{a.name}' valid_until "
                                f"{b.valid_from} or '{b.name}' valid_from {a.valid_until}")
        if problems:
            raise ValueError("; ".join(problems))
        return tariffs

    # Set by parse_site, not by the file.
    _base_dir: Path = PrivateAttr(default=Path("."))
    _models: dict[str, MeterModel] = PrivateAttr(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def models(self) -> dict[str, MeterModel]:
        return self._models

    @property
    def alert_prefix(self) -> str:
        """Where alerts are published: `alerts.mqtt_prefix`, by default `<site id>/alerts`."""
        return self.alerts.mqtt_prefix or default_alert_prefix(self.site.id)

    def bus(self, bus_id: str) -> ModbusTcpBus | ModbusRtuBus | Dlt645Bus:
        return next(b for b in self.buses if b.id == bus_id)

    def meter(self, meter_id: str) -> Meter:
        return next(m for m in self.meters if m.id == meter_id)

    def output(self, output_id: str) -> ModbusOutput | MqttOutput:
        return next(o for o in self.outputs if o.id == output_id)

    @property
    def storage_path(self) -> Path:
        p = Path(self.storage.path)
        return p if p.is_absolute() else self.base_dir / p



class ConfigError(Exception):
    def __init__(self, problems: list[str], source: str = ""):
        self.problems = problems
        self.source = source
        super().__init__("\n".join(problems))


# ---- loading ---------------------------------------------------------------------------------

def _path(loc: tuple) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in UNION_TAGS and i > 0 and isinstance(loc[i - 1], int):
            continue  # pydantic's union tag, not a key the user wrote
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: dict) -> str:
    kind, loc = err["type"], err["loc"]
    key = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        if isinstance(key, str) and any(w in key.lower() for w in SECRET_WORDS) and not key.endswith("_env"):
            return (f"secrets are not written in the site file: use '{key}_env' naming an "
                    "environment variable")
        return "unknown key"
    if kind == "string_pattern_mismatch":
        if key == "url":
            return f"{_show(err['input'])} is not a URL (expected http://host:port or https://host:port)"
        if key == "address":
            return f"{_show(err['input'])} is not a DL/T 645 address: 12 digits, in quotes (e.g. '000012345678')"
        if isinstance(key, str) and key.endswith("_env"):
            return f"{_show(err['input'])} is not an environment variable name"
        return f"{_show(err['input'])}: use letters, digits, '.', '_' and '-' only"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"unknown type '{err['ctx']['tag']}' (expected one of: {err['ctx']['expected_tags']})"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": "at least", "greater_than": "more than",
                 "less_than_equal": "at most", "less_than": "less than"}[kind]
        limit = next(iter(err["ctx"].values()))
        return f"{_show(err['input'])} is out of range: must be {bound} {limit}"
    if kind == "union_tag_not_found":
        return "'type' is missing"
    if kind == "literal_error":
        return f"{_show(err['input'])} is not allowed; {err['msg'].replace('Input should be ', 'expected ')}"
    msg = re.sub(r"^Value error, ", "", err["msg"])
    if kind.endswith("_type"):  # string_type, list_type, model_type, ...
        return f"{msg} (found {_kind(err['input'])})"
    return msg


def _kind(value: Any) -> str:
    """What a value is, in the words of the YAML file."""
    if value is None:
        return "nothing (null)"
    for cls, word in ((bool, "true/false"), (int, "a number"), (float, "a number"), (str, "text"),
                      (dict, "a mapping"), (list, "a list")):
        if isinstance(value, cls):
            return f"{word} {_show(value)}" if cls in (int, float, str) else word
    return type(value).__name__


def _entries(container: Any, key: str) -> list[tuple[int, dict]]:
    """The mappings of the list `container[key]` with their index; nothing when it is no list."""
    seq = container.get(key) if isinstance(container, dict) else None
    return [(i, x) for i, x in enumerate(seq) if isinstance(x, dict)] if isinstance(seq, list) else []


def _names(items: Any) -> list[tuple[int, str]]:
    """The text values of a list with their index. A value of another type (a list where an id
    belongs) is already a problem from the models and is left out of the checks across sections,
    which look values up in sets."""
    return [(j, v) for j, v in enumerate(items) if isinstance(v, str)] if isinstance(items, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _known(names: Any) -> str:
    """Some of the names that exist, for a 'no X named ...' line (built once per section)."""
    names = sorted(names)
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "") or "none defined"


def _unique(problems: list[str], section: str, items: list[tuple[int, dict]], key: str = "id") -> dict[str, int]:
    """First index of each text `key` in `items`; a repeat is a problem."""
    first: dict[str, int] = {}
    for i, item in items:
        ident = _text(item.get(key))
        if ident is None:
            continue
        if ident in first:
            problems.append(f"{section}[{i}].{key}: '{ident}' is already used by {section}[{first[ident]}]")
        else:
            first[ident] = i
    return first


def _cross_check(data: dict, models: dict[str, MeterModel]) -> list[str]:
    """Checks across sections, on the raw data so they run even when some entries are invalid.
    Linear in the size of the file: every lookup is in a dict or set built once."""
    problems: list[str] = []
    buses = {b: x for b, x in ((_text(x.get("id")), x) for _, x in _entries(data, "buses")) if b is not None}
    _unique(problems, "buses", _entries(data, "buses"))
    meter_ids = _unique(problems, "meters", _entries(data, "meters"))
    _unique(problems, "card_readers", _entries(data, "card_readers"))
    _unique(problems, "doors", _entries(data, "doors"))
    seen_users: dict[str, int] = {}
    for i, u in _entries(data, "users"):
        name = _text(u.get("name"))
        if name in seen_users:
            problems.append(f"users[{i}].name: '{name}' is already users[{seen_users[name]}]")
        elif name is not None:
            seen_users[name] = i
    problems.extend(_check_access_patrol(data))
    problems.extend(_check_topics(data))
    problems.extend(_check_lighting(data, buses, meter_ids))
    problems.extend(check_rules(data))
    allocation = data.get("allocation")
    for i, g in _entries(allocation, "groups"):
        for j, mid in _names(g.get("meters")):
            if mid not in meter_ids:
                problems.append(f"allocation.groups[{i}].meters[{j}]: no meter named '{mid}'")
    known_buses, known_models = _known(buses), _known(models)
    kinds = _model_kinds(models)
    where: dict[tuple[str, Any], int] = {}
    for i, m in _entries(data, "meters"):
        bus_id, model, unit, address = _text(m.get("bus")), _text(m.get("model")), m.get("unit"), m.get("address")
        if bus_id is not None and bus_id not in buses:
            problems.append(f"meters[{i}].bus: no bus named '{bus_id}' (buses: {known_buses})")
        if model is not None and model not in models:
            problems.append(f"meters[{i}].model: no meter model '{model}' (known: {known_models})")
        problems.extend(_protocol_check(i, m, buses.get(bus_id), models, kinds))
        if bus_id is None:
            continue
        if isinstance(address, str):
            if (bus_id, address) in where:
                j = where[(bus_id, address)]
                problems.append(f"meters[{i}].address: address {address} on bus '{bus_id}' is already "
                                f"meters[{j}] ('{data['meters'][j].get('id')}')")
            else:
                where[(bus_id, address)] = i
        if isinstance(unit, int) and not isinstance(unit, bool):
            if (bus_id, unit) in where:
                j = where[(bus_id, unit)]
                problems.append(f"meters[{i}].unit: unit {unit} on bus '{bus_id}' is already "
                                f"meters[{j}] ('{data['meters'][j].get('id')}')")
            else:
                where[(bus_id, unit)] = i
    return problems


def _is_dlt645(model: Any) -> bool:
    return getattr(model, "protocol", "") == "dlt645"


def _model_kinds(models: dict[str, Any]) -> dict[bool, str]:
    """The names of the DL/T 645 models (True) and of the register maps (False), for messages."""
    return {kind: ", ".join(sorted(k for k, v in models.items() if _is_dlt645(v) == kind)) or "none"
            for kind in (True, False)}


def _protocol_check(i: int, m: dict, bus: Any, models: dict[str, Any], kinds: dict[bool, str]) -> list[str]:
    """A meter on a Modbus bus is named by its `unit` id and read with a register map; a meter on
    a DL/T 645 bus is named by its 12-digit `address` and read with a DL/T 645 model."""
    if not isinstance(bus, dict) or bus.get("type") not in BUS_TYPES:
        return []
    kind, bus_id = bus["type"], bus.get("id")
    unit, address, name = m.get("unit"), m.get("address"), m.get("model")
    model = models.get(name) if isinstance(name, str) else None
    out = []
    if kind == "dlt645":
        if unit is not None:
            out.append(f"meters[{i}].unit: bus '{bus_id}' is a DL/T 645 line: its meters have an 'address' "
                       "(12 digits), not a Modbus unit id")
        if address is None:
            out.append(f"meters[{i}].address: required on DL/T 645 bus '{bus_id}': the meter's 12-digit address "
                       "in quotes, e.g. address: '000012345678' (on its nameplate; `gateway scan --protocol "
                       "dlt645` reads it)")
        if model is not None and not _is_dlt645(model):
            out.append(f"meters[{i}].model: '{name}' is a Modbus register map; a meter on DL/T 645 bus "
                       f"'{bus_id}' needs a DL/T 645 model (known: {kinds[True]})")
    else:
        if address is not None:
            out.append(f"meters[{i}].address: bus '{bus_id}' is {kind}: its meters have a Modbus 'unit' id "
                       "(1-247), not a DL/T 645 address")
        if unit is None:
            out.append(f"meters[{i}].unit: required on Modbus bus '{bus_id}' ({kind}): the meter's unit id, "
                       "1-247 (an 'address' is for meters on a bus of type dlt645)")
        if model is not None and _is_dlt645(model):
            out.append(f"meters[{i}].model: '{name}' is a DL/T 645 model; a meter on Modbus bus '{bus_id}' "
                       f"needs a register map (known: {kinds[False]})")
    return out


def _check_access_patrol(data: dict) -> list[str]:
    problems: list[str] = []
    doors = {d for d in (_text(x.get("id")) for _, x in _entries(data, "doors")) if d is not None}
    known_doors = _known(doors)
    uses_mqtt = False
    for i, r in _entries(data, "card_readers"):
        uses_mqtt |= r.get("type") == "mqtt"
        door = _text(r.get("door"))
        if door is not None and door not in doors:
            problems.append(f"card_readers[{i}].door: no door named '{door}' (doors: {known_doors})")
    uses_mqtt |= any(d.get("topic") for _, d in _entries(data, "doors"))
    patrol = data.get("patrol")
    ids = _unique(problems, "patrol.checkpoints", _entries(patrol, "checkpoints"))
    tags: dict[str, int] = {}
    for i, c in _entries(patrol, "checkpoints"):
        tag = c.get("tag")
        tag = str(tag).upper() if isinstance(tag, (str, int)) and not isinstance(tag, bool) else ""
        if tag and tag in tags:
            problems.append(f"patrol.checkpoints[{i}].tag: tag {tag} is already patrol.checkpoints[{tags[tag]}]")
        tags.setdefault(tag, i)
    _unique(problems, "patrol.readers", _entries(patrol, "readers"))
    _unique(problems, "patrol.routes", _entries(patrol, "routes"))
    uses_mqtt |= any(r.get("type") == "mqtt" for _, r in _entries(patrol, "readers"))
    for i, r in _entries(patrol, "routes"):
        for j, cp in _names(r.get("checkpoints")):
            if cp not in ids:
                problems.append(f"patrol.routes[{i}].checkpoints[{j}]: no checkpoint named '{cp}'")
    if uses_mqtt and not isinstance(data.get("mqtt"), dict):
        problems.append("mqtt: required, because readers or doors use MQTT topics")
    return problems


BUILTIN_HOLIDAYS = ("spring_festival",)


def _check_lighting(data: dict, buses: dict[str, dict], meter_ids: dict[str, int]) -> list[str]:
    """Outputs on buses that exist and speak Modbus, at a place no meter or other output holds;
    circuits naming outputs, meters and schedules that exist, each output switched by one circuit."""
    problems: list[str] = []
    outputs = _unique(problems, "outputs", _entries(data, "outputs"))
    meters_at: dict[tuple[str, int], int] = {}
    for i, m in _entries(data, "meters"):
        if isinstance(m.get("bus"), str) and isinstance(m.get("unit"), int):
            meters_at.setdefault((m["bus"], m["unit"]), i)
    places: dict[tuple, int] = {}
    uses_mqtt = False
    for i, o in _entries(data, "outputs"):
        if o.get("type") == "mqtt":
            uses_mqtt = True
            continue
        bus_id, unit = _text(o.get("bus")), o.get("unit")
        if bus_id is None:
            continue
        bus = buses.get(bus_id)
        if bus is None:
            problems.append(f"outputs[{i}].bus: no bus named '{bus_id}' (buses: {_known(buses)})")
            continue
        if bus.get("type") == "dlt645":
            problems.append(f"outputs[{i}].bus: bus '{bus_id}' is a DL/T 645 line: relay modules speak Modbus")
            continue
        if not isinstance(unit, int) or isinstance(unit, bool):
            continue
        if (bus_id, unit) in meters_at:
            j = meters_at[(bus_id, unit)]
            problems.append(f"outputs[{i}].unit: unit {unit} on bus '{bus_id}' is meter meters[{j}] "
                            f"('{data['meters'][j].get('id')}'): a relay module needs its own unit id")
        kind, address = o.get("kind", "coil"), o.get("address")
        if not isinstance(kind, str) or not isinstance(address, int) or isinstance(address, bool):
            continue  # the models say what is wrong with them
        place = (bus_id, unit, kind, address)
        if place in places:
            j = places[place]
            problems.append(f"outputs[{i}].address: {place[2]} {place[3]} of unit {unit} on bus '{bus_id}' is "
                            f"already outputs[{j}] ('{data['outputs'][j].get('id')}')")
        else:
            places[place] = i
    if uses_mqtt and not isinstance(data.get("mqtt"), dict):
        problems.append("mqtt: required, because outputs use MQTT topics")
    lighting = data.get("lighting")
    schedules = _unique(problems, "lighting.schedules", _entries(lighting, "schedules"))
    _unique(problems, "lighting.circuits", _entries(lighting, "circuits"))
    holidays = set(BUILTIN_HOLIDAYS)
    if isinstance(lighting, dict) and isinstance(lighting.get("holidays"), dict):
        holidays |= {k for k in lighting["holidays"] if isinstance(k, str)}
    for i, sch in _entries(lighting, "schedules"):
        for j, e in _entries(sch, "exceptions"):
            for k, h in _names(e.get("holidays")):
                if h not in holidays:
                    problems.append(f"lighting.schedules[{i}].exceptions[{j}].holidays[{k}]: no holiday named "
                                    f"'{h}' (known: {_known(holidays)}; name more in lighting.holidays)")
    switched: dict[str, str] = {}
    for i, c in _entries(lighting, "circuits"):
        where = f"lighting.circuits[{i}]"
        sch = _text(c.get("schedule"))
        if sch is not None and sch not in schedules:
            problems.append(f"{where}.schedule: no schedule named '{sch}' (schedules: {_known(schedules)})")
        for j, o in _names(c.get("outputs")):
            if o not in outputs:
                problems.append(f"{where}.outputs[{j}]: no output named '{o}' (outputs: {_known(outputs)})")
            elif o in switched:
                problems.append(f"{where}.outputs[{j}]: output '{o}' is already switched by {switched[o]}")
            else:
                switched[o] = f"{where} ('{c.get('id')}')"
        for j, m in _names(c.get("meters")):
            if m not in meter_ids:
                problems.append(f"{where}.meters[{j}]: no meter named '{m}'")
    return problems


def default_alert_prefix(site_id: str) -> str:
    return f"{site_id}/alerts"


def _check_topics(data: dict) -> list[str]:
    """A reader or door subscribed to the gateway's own alert topics would take them as input
    (a reader on '#' gets every alert as a garbled swipe). The topics' grammar is checked by the
    models; this needs the site id and the alert prefix."""
    site, alerts = data.get("site"), data.get("alerts")
    prefix = alerts.get("mqtt_prefix") if isinstance(alerts, dict) else None
    if prefix is None and isinstance(site, dict) and isinstance(site.get("id"), str):
        prefix = default_alert_prefix(site["id"])
    if not isinstance(prefix, str) or prefix_problem(prefix):
        return []
    own = alert_topics(prefix)
    subscribed = [(f"card_readers[{i}]", r) for i, r in _entries(data, "card_readers") if r.get("type") == "mqtt"]
    subscribed += [(f"doors[{i}]", d) for i, d in _entries(data, "doors")]
    subscribed += [(f"patrol.readers[{i}]", r) for i, r in _entries(data.get("patrol"), "readers")
                   if r.get("type") == "mqtt"]
    return [f"{where}.topic: {_show(topic)} would also receive the gateway's own alerts ({prefix}/<rule>/<source>)"
            for where, x in subscribed
            if isinstance(topic := x.get("topic"), str) and not filter_problem(topic) and filters_overlap(topic, own)]


def load_site(path: str | Path) -> SiteConfig:
    path = Path(path)
    src = str(path)
    try:
        data = read_yaml_file(path)
    except YamlFileError as e:
        raise ConfigError([_one_line(e.line(src))], src) from None
    return parse_site(data, base_dir=path.resolve().parent, source=src)


def parse_site(data: Any, base_dir: Path, source: str = "site file") -> SiteConfig:
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of sections (site, buses, meters, ...)"], source)
    problems: list[str] = []
    cfg = None
    try:
        cfg = SiteConfig.model_validate(data)
    except ValidationError as e:
        problems += [f"{_path(err['loc'])}: {_message(err)}" for err in e.errors()]
    dirs = model_dirs(base_dir, [d for _, d in _names(data.get("meter_models")) if "\x00" not in d])
    models, model_problems = load_models(dirs)
    dlt_models, dlt_problems = load_dlt645_models(dirs)
    model_problems += dlt_problems + [
        f"{dlt_models[name].path}: model '{name}' is also a Modbus register map ({models[name].path}): "
        "rename one of them" for name in sorted(set(models) & set(dlt_models))]
    models.update(dlt_models)
    problems += model_problems + _cross_check(data, models)
    if cfg is not None:
        problems += _check_buildings(cfg)
    if problems or cfg is None:
        raise ConfigError([_one_line(p) for p in problems], source)
    cfg._base_dir = base_dir
    cfg._models = models
    return cfg


def _check_buildings(cfg: SiteConfig) -> list[str]:
    """Once the site states its buildings (allocation.buildings), a meter or group naming another
    one, or a unit the building does not list, is a typo that would move its cost elsewhere."""
    stated = cfg.allocation.buildings
    if not stated:
        return []
    known = _known(stated)
    problems = []

    def check(where: str, building: str | None, unit: str | None, unit_key: str) -> None:
        if building is None:
            return
        if building not in stated:
            problems.append(f"{where}.building: '{building}' is not in allocation.buildings ({known})")
        elif unit is not None and stated[building] and unit not in stated[building]:
            problems.append(f"{where}.{unit_key}: building '{building}' has no unit '{unit}' in "
                            f"allocation.buildings (its units: {', '.join(stated[building])})")
    for i, m in enumerate(cfg.meters):
        check(f"meters[{i}]", m.building, m.unit_no, "unit_no")
    for i, g in enumerate(cfg.allocation.groups):
        check(f"allocation.groups[{i}]", g.building, g.unit, "unit")
    return problems


def site_warnings(cfg: SiteConfig) -> list[str]:
    """What is allowed but most likely a mistake: `gateway check-config` shows it and exits 0."""
    out = []
    if cfg.site.id == EXAMPLE_SITE_ID:
        out.append(f"site.id: '{EXAMPLE_SITE_ID}' is the example site's id: give each estate its own (head office "
                   f"tells estates apart by it; two estates with one id merge their data)")
    for i, t in enumerate(cfg.tariffs):
        for period, price in t.named_prices():
            if implausible_price(price):
                key = "price" if t.price is not None else f"prices.{period}"
                out.append(f"tariffs[{i}].{key}: {price} yuan/kWh for '{t.name}' is outside "
                           f"{PLAUSIBLE_PRICE_MIN}-{PLAUSIBLE_PRICE_MAX} yuan/kWh, where electricity prices in "
                           f"China lie: a slipped decimal point? (gateway allocate refuses it without --force)")
    return out


def missing_env(cfg: SiteConfig) -> list[str]:
    """Secrets the site file names (`*_env`) whose environment variables are not set."""
    import os
    out = []
    for i, w in enumerate(cfg.alerts.webhooks):
        if w.url_env not in os.environ:
            out.append(f"alerts.webhooks[{i}].url_env: environment variable {w.url_env} is not set")
    for section in ("influxdb", "mqtt"):
        part = getattr(cfg, section)
        for key in ("token_env", "username_env", "password_env"):
            name = getattr(part, key, None)
            if name and name not in os.environ:
                out.append(f"{section}.{key}: environment variable {name} is not set")
    return out


def model_dirs(base_dir: Path, extra: list[str]) -> list[Path]:
    """Shipped models first, then the site's own (a later file of the same name wins)."""
    return [SHIPPED_MODELS_DIR, base_dir / "meter_models", *(base_dir / d for d in extra)]
