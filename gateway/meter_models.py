"""Meter models as data: the YAML register maps and the codec that turns registers into values.

A model file (`edge_config/meter_models/<model>.yaml`) lists fields with address, function,
type, word order, scale, offset and unit. Adding a meter model never needs code; a site can
correct a shipped model by placing a file of the same name in its own model directory.

DL/T 645 meters are modelled the same way (a model directory's `dlt645/` folder names, per shared
field name, a data identifier and a BCD format; the format is described in
gateway/drivers/dlt645.py). Their schema lives here, not in the driver, so that the site file
(gateway/config.py) checks models without importing any driver.
"""

from __future__ import annotations

import re
import struct
from functools import lru_cache
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .yamlfile import YamlFileError, read_yaml_file

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent.parent / "edge_config" / "meter_models"

# Names shared across models so rules and billing work for any meter.
STANDARD_FIELDS = {
    "voltage_v", "current_a", "power_kw", "reactive_kvar", "apparent_kva", "pf", "freq_hz",
    "energy_kwh", "export_energy_kwh",
    "voltage_l1_v", "voltage_l2_v", "voltage_l3_v",
    "voltage_l1_l2_v", "voltage_l2_l3_v", "voltage_l3_l1_v",
    "current_l1_a", "current_l2_a", "current_l3_a",
    "power_l1_kw", "power_l2_kw", "power_l3_kw",
    "pf_l1", "pf_l2", "pf_l3",
    "energy_l1_kwh", "energy_l2_kwh", "energy_l3_kwh",
}

HOLDING, INPUT = 3, 4
MAX_REGISTERS_PER_READ = 125  # the Modbus limit for function 03/04

# type -> (registers, struct code, is float)
TYPES: dict[str, tuple[int, str]] = {
    "uint16": (1, "H"), "int16": (1, "h"),
    "uint32": (2, "I"), "int32": (2, "i"), "float32": (2, "f"),
    "uint64": (4, "Q"), "int64": (4, "q"),
}
WORD_ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")

TypeName = Literal["uint16", "int16", "uint32", "int32", "float32", "uint64", "int64"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]


def _swap_bytes(b: bytes) -> bytes:
    out = bytearray(b)
    out[0::2], out[1::2] = b[1::2], b[0::2]
    return bytes(out)


def _reverse_words(b: bytes) -> bytes:
    return b"".join(b[i:i + 2] for i in range(len(b) - 2, -1, -2))


def to_canonical(raw: bytes, word_order: str) -> bytes:
    """Bytes as they came off the wire (words in register order) -> big-endian value bytes.

    ABCD: high word first, high byte first (Modbus "big endian"); CDAB: low word first;
    BADC: high word first with the bytes of each word swapped; DCBA: fully little endian.
    The transform is its own inverse, so it also turns value bytes into wire bytes.
    """
    if word_order == "ABCD":
        return raw
    if word_order == "CDAB":
        return _reverse_words(raw)
    if word_order == "BADC":
        return _swap_bytes(raw)
    return raw[::-1]  # DCBA


def float32_text(x: float) -> str:
    """The shortest decimal text that reads back as the same float32 (what the meter meant)."""
    return _float32_text(struct.pack(">f", x))  # keyed by bits: 0.0 and -0.0 are equal floats


@lru_cache(maxsize=8192)  # counters repeat or creep: most polls ask for a value seen before
def _float32_text(packed: bytes) -> str:
    x = struct.unpack(">f", packed)[0]
    for digits in range(6, 10):
        text = f"{x:.{digits}g}"
        if struct.pack(">f", float(text)) == packed:
            return text
    return repr(x)


@lru_cache(maxsize=256)
def _decimal(x: float) -> Decimal:
    return Decimal(repr(x))


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    address: int
    function: int
    type: str
    word_order: str
    scale: float
    offset: float
    unit: str
    counter: bool

    @property
    def words(self) -> int:
        return TYPES[self.type][0]

    @property
    def end(self) -> int:
        return self.address + self.words

    def raw_from_bytes(self, wire: bytes) -> int | float:
        """Decode the wire bytes of this field (2 × words long) to the raw register value."""
        return struct.unpack(">" + TYPES[self.type][1], to_canonical(wire, self.word_order))[0]

    def value(self, raw: int | float) -> float:
        return raw * self.scale + self.offset

    def exact(self, raw: int | float) -> Decimal:
        """The scaled value without binary rounding (for energy counters)."""
        d = Decimal(float32_text(raw)) if self.type == "float32" else Decimal(raw)
        if self.scale != 1:
            d *= _decimal(self.scale)
        if self.offset:
            d += _decimal(self.offset)
        return d

    def raw_for(self, value: float) -> int | float:
        """Inverse of `value`, for simulators: the raw register value that shows `value`."""
        raw = (value - self.offset) / self.scale
        if self.type == "float32":
            return raw
        bits = self.words * 16
        raw = round(raw)
        if self.type.startswith("u"):
            return raw % (1 << bits)  # counters wrap like the meter's own
        half = 1 << (bits - 1)
        return (raw + half) % (1 << bits) - half

    def encode_raw(self, raw: int | float) -> list[int]:
        """Raw value -> register words as the meter sends them."""
        wire = to_canonical(struct.pack(">" + TYPES[self.type][1], raw), self.word_order)
        return list(struct.unpack(f">{self.words}H", wire))


@dataclass(frozen=True, slots=True)
class MeterModel:
    id: str
    name: str
    phases: int
    max_registers: int
    fields: tuple[FieldSpec, ...]
    source: str = ""
    path: Path | None = None

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


# ---- the YAML schema -------------------------------------------------------------------

def _function_code(v: Any) -> int:
    names = {"holding": HOLDING, "input": INPUT, 3: HOLDING, 4: INPUT, "03": HOLDING, "04": INPUT}
    if isinstance(v, (str, int)) and v in names:  # a list here cannot be looked up
        return names[v]
    raise ValueError("function must be 'holding' (03) or 'input' (04)")


class _FieldDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: int = Field(ge=0, le=0xFFFF)
    function: int
    type: TypeName
    word_order: WordOrder
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    counter: bool = False
    description: str = ""

    _fn = field_validator("function", mode="before")(lambda cls, v: _function_code(v))

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0")
        return v


class _Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    function: Any = "holding"
    type: TypeName = "float32"
    word_order: WordOrder = "ABCD"


class _ModelDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    name: str
    source: str = ""
    phases: Literal[1, 3] = 1
    max_registers: int = Field(default=MAX_REGISTERS_PER_READ, ge=1, le=MAX_REGISTERS_PER_READ)
    defaults: _Defaults = _Defaults()
    fields: dict[str, _FieldDef]

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("fields"), dict):
            d = data.get("defaults") or {}
            base = {"function": "holding", "type": "float32", "word_order": "ABCD"}
            base.update({k: v for k, v in d.items() if k in base} if isinstance(d, dict) else {})
            data = dict(data)
            data["fields"] = {
                k: ({**base, **v} if isinstance(v, dict) else v) for k, v in data["fields"].items()
            }
        return data

    @field_validator("fields")
    @classmethod
    def _names(cls, v: dict[str, _FieldDef]) -> dict[str, _FieldDef]:
        return check_field_names(v)


def check_field_names(fields: dict) -> dict:
    """Field names shared by every model kind: lower_snake_case, at least one."""
    import re
    for name in fields:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"field name '{name}' must be lower_snake_case")
    if not fields:
        raise ValueError("a model needs at least one field")
    return fields


class ModelError(Exception):
    """A model file that cannot be used; `problems` are plain lines, each naming the file."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_model(data: Any, path: Path) -> MeterModel:
    try:
        m = _ModelDef.model_validate(data)
    except ValidationError as e:
        raise ModelError([f"{path}: {_loc(err['loc']) or '(file)'}: {err['msg']}"
                          for err in e.errors()]) from None
    if m.model != path.stem:
        raise ModelError([f"{path}: model: '{m.model}' must match the file name '{path.stem}'"])
    fields = tuple(
        FieldSpec(name, f.address, f.function, f.type, f.word_order, f.scale, f.offset,
                  f.unit, f.counter or name.endswith("_kwh"))
        for name, f in m.fields.items()
    )
    problems = [f"{path}: fields.{f.name}: {f.words} registers from {f.address:#06x} pass 0xFFFF"
                for f in fields if f.end > 0x10000]
    problems += [f"{path}: fields.{f.name}: {f.words} registers exceed max_registers {m.max_registers}"
                 for f in fields if f.words > m.max_registers]
    if problems:
        raise ModelError(problems)
    return MeterModel(m.model, m.name, m.phases, m.max_registers, fields, m.source, path)


def load_model_file(path: Path) -> MeterModel:
    try:
        data = read_yaml_file(path)
    except YamlFileError as e:
        raise ModelError([e.line(str(path))]) from None
    return parse_model(data, path)


def load_models(dirs: list[Path]) -> tuple[dict[str, MeterModel], list[str]]:
    """Load every `*.yaml` in `dirs`; a later directory overrides a model of the same name.

    Returns the models and the problems found (a broken file does not hide the others).
    """
    models: dict[str, MeterModel] = {}
    problems: list[str] = []
    seen: set[Path] = set()
    for d in dirs:
        d = d.resolve()
        if d in seen or not d.is_dir():
            continue
        seen.add(d)
        for path in sorted(d.glob("*.yaml")):
            try:
                models[path.stem] = load_model_file(path)
            except ModelError as e:
                problems.extend(e.problems)
    return models, problems


# ---- DL/T 645 models: data identifiers, values in BCD with a format ------------------------------

DI_FORMAT = re.compile(r"^(X+)(?:\.(X+))?$")


@dataclass(frozen=True, slots=True)
class DiField:
    name: str
    di: int
    format: str       # e.g. XXXXXX.XX
    digits: int
    decimals: int
    signed: bool
    scale: Decimal
    unit: str
    counter: bool

    @property
    def nbytes(self) -> int:
        return self.digits // 2

    @property
    def di_bytes(self) -> bytes:
        return self.di.to_bytes(4, "little")

    def raw(self, data: bytes) -> Decimal | None:
        """The value bytes (least significant first, 0x33 removed) as the meter shows them;
        None when they are not BCD (a meter's way of saying it has no such value)."""
        if len(data) < self.nbytes:
            return None
        b = bytearray(data[:self.nbytes][::-1])
        negative = False
        if self.signed and b[0] & 0x80:
            negative = True
            b[0] &= 0x7F
        text = b.hex()
        if not text.isdigit():
            return None
        d = Decimal(int(text)).scaleb(-self.decimals)
        return -d if negative else d

    def exact(self, data: bytes) -> Decimal | None:
        d = self.raw(data)
        if d is None or self.scale == 1:
            return d
        return d * self.scale

    def encode(self, value: float | Decimal) -> bytes:
        """The value bytes a meter sends for `value` (for simulators): truncated to the format's
        resolution; counters wrap like the meter's register, other values saturate."""
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if self.scale != 1:
            d /= self.scale
        units = int((abs(d).scaleb(self.decimals)).to_integral_value(ROUND_FLOOR))
        limit = 8 * 10 ** (self.digits - 1) if self.signed else 10 ** self.digits  # sign bit: top digit 0-7
        if self.counter:
            units %= limit
        else:
            units = min(units, limit - 1)
        b = bytearray(bytes.fromhex(f"{units:0{self.digits}d}"))
        if self.signed and d < 0 and units:
            b[0] |= 0x80
        return bytes(b[::-1])

    def shown(self, value: float | Decimal) -> Decimal:
        """What a correct decoder makes of `encode(value)`."""
        out = self.exact(self.encode(value))
        assert out is not None
        return out


@dataclass(frozen=True, slots=True)
class Dlt645Model:
    id: str
    name: str
    phases: int
    fields: tuple[DiField, ...]
    source: str = ""
    path: Path | None = None
    protocol: str = "dlt645"

    def field(self, name: str) -> DiField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


def is_dlt645_model(model: Any) -> bool:
    return getattr(model, "protocol", "") == "dlt645"


class _DiFieldDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    di: str = Field(pattern=r"^[0-9A-Fa-f]{8}$")
    format: str
    signed: bool = False
    scale: Decimal = Field(default=Decimal(1), gt=0)
    unit: str = ""
    counter: bool = False
    description: str = ""

    @field_validator("di", mode="before")
    @classmethod
    def _di_text(cls, v: Any) -> Any:
        if isinstance(v, int):
            raise ValueError("write the data identifier in quotes, e.g. di: \"00010000\" (YAML reads "
                             "digits without quotes as a number)")
        return v

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        m = DI_FORMAT.match(v)
        if not m:
            raise ValueError(f"format {v!r}: expected X digits with an optional point, e.g. XXXXXX.XX")
        digits = len(m.group(1)) + len(m.group(2) or "")
        if digits % 2 or not 2 <= digits <= 16:
            raise ValueError(f"format {v!r}: BCD needs an even number of digits (2-16), got {digits}")
        return v


class _Dlt645ModelDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    name: str
    protocol: Literal["dlt645-2007"]
    source: str = ""
    phases: Literal[1, 3] = 1
    fields: dict[str, _DiFieldDef]

    @field_validator("fields")
    @classmethod
    def _names(cls, v: dict[str, _DiFieldDef]) -> dict[str, _DiFieldDef]:
        return check_field_names(v)


def parse_dlt645_model(data: Any, path: Path) -> Dlt645Model:
    try:
        m = _Dlt645ModelDef.model_validate(data)
    except ValidationError as e:
        raise ValueError("\n".join(
            f"{path}: {'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors())) from None
    if m.model != path.stem:
        raise ValueError(f"{path}: model: '{m.model}' must match the file name '{path.stem}'")
    fields = []
    for name, f in m.fields.items():
        whole, _, frac = f.format.partition(".")
        fields.append(DiField(name, int(f.di, 16), f.format, len(whole) + len(frac), len(frac), f.signed,
                              f.scale, f.unit, f.counter or name.endswith("_kwh")))
    dis = [f.di for f in fields]
    dupes = sorted({f"{d:08X}" for d in dis if dis.count(d) > 1})
    if dupes:
        raise ValueError(f"{path}: fields: data identifier(s) {', '.join(dupes)} used by more than one field")
    return Dlt645Model(m.model, m.name, m.phases, tuple(fields), m.source, path)


def load_dlt645_models(dirs: list[Path]) -> tuple[dict[str, Dlt645Model], list[str]]:
    """DL/T 645 models from each model directory's `dlt645/` folder; a later one wins."""
    models: dict[str, Dlt645Model] = {}
    problems: list[str] = []
    seen: set[Path] = set()
    for d in dirs:
        d = (d / "dlt645").resolve()
        if d in seen or not d.is_dir():
            continue
        seen.add(d)
        for path in sorted(d.glob("*.yaml")):
            try:
                models[path.stem] = parse_dlt645_model(read_yaml_file(path), path)
            except YamlFileError as e:
                problems.append(e.line(str(path)))
            except ValueError as e:
                problems.extend(str(e).splitlines())
    return models, problems
