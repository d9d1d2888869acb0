"""The audit catalog as data (audit.md, "The audit catalog"): restricted codes, versioned by
effective date like the policy, with per-region overrides.

Why pydantic (as for the policy): a catalog is edited by people at a bureau and a bad key
must be named with its full location (``version[2021].entries.LAB-PSA.age_min``); the
engine reads the resulting frozen models.

Overrides apply by the region where the visit is treated (``VisitOpened.facility_region``):
national practice for cross-province direct settlement is the treatment place's catalog
with the insured place's policy (就医地目录, 参保地政策); the policy's overrides go by the
insured region.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from yibao.rules.data import read_toml
from yibao.rules.exceptions import CatalogError


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1)
    sex: Literal["M", "F"] | None = None
    age_min: int | None = Field(default=None, ge=0)
    age_max: int | None = Field(default=None, ge=0)
    min_level: Literal[1, 2, 3] | None = None
    setting: Literal["inpatient"] | None = None
    max_per_day: int | None = Field(default=None, ge=1)
    absolute: bool = False
    freq_days: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _range(self) -> CatalogEntry:
        if self.age_min is not None and self.age_max is not None and self.age_min > self.age_max:
            raise ValueError(f"age_min {self.age_min} > age_max {self.age_max}")
        return self

    @property
    def has_age_range(self) -> bool:
        return self.age_min is not None or self.age_max is not None


class CatalogVersion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: str = Field(min_length=1)
    effective_from: dt.date
    entries: dict[str, CatalogEntry]


class Catalog:
    """Every version, and each as it applies in a region (resolved once, cached)."""

    def __init__(self, name: str, raw: list[dict[str, Any]], overrides: list[dict[str, Any]]
                 ) -> None:
        self.name = name
        self._raw = raw
        self._overrides = overrides
        self.versions = tuple(_build(v, f"version[{v['id']}]") for v in raw)
        self._regional: dict[tuple[str, int], CatalogVersion] = {}
        self._in_force: dict[tuple[dt.date, str], CatalogVersion | None] = {}
        for region in {o["region"] for o in overrides}:  # validate every override now
            for i in range(len(self.versions)):
                self.for_region(region, i)
        #: every code that has a FREQUENCY window in some version: what a settled visit's
        #: history keeps of its lines
        self.freq_codes = frozenset(
            code for v in (*self.versions, *self._regional.values())
            for code, e in v.entries.items() if e.freq_days is not None)

    def in_force(self, d: dt.date, region: str) -> CatalogVersion | None:
        """The version with the greatest ``effective_from <= d`` as patched for ``region``
        (memoised: a checkout asks once, with few distinct days and regions)."""
        key = (d, region)
        try:
            return self._in_force[key]
        except KeyError:
            pass
        found = self._find(d, region)
        if len(self._in_force) > 100_000:
            self._in_force.clear()
        self._in_force[key] = found
        return found

    def _find(self, d: dt.date, region: str) -> CatalogVersion | None:
        index = -1
        for i, v in enumerate(self.versions):
            if v.effective_from <= d:
                index = i
        return None if index < 0 else self.for_region(region, index)

    def for_region(self, region: str, index: int) -> CatalogVersion:
        key = (region, index)
        hit = self._regional.get(key)
        if hit is not None:
            return hit
        base = self.versions[index]
        patches = sorted((o for o in self._overrides
                          if _region_matches(o["region"], region)
                          and (o.get("versions") is None or base.id in o["versions"])),
                         key=lambda o: o["region"] == region)  # province first, exact wins
        if not patches:
            self._regional[key] = base
            return base
        doc = self._raw[index]
        for o in patches:
            doc = {**doc, "entries": _patch_entries(doc["entries"], o.get("entries", {}))}
        built = _build(doc, f"override[{region}].version[{base.id}]")
        self._regional[key] = built
        return built


def _region_matches(pattern: str, region: str) -> bool:
    return pattern == region or (pattern.endswith("0000") and pattern[:2] == region[:2])


def _patch_entries(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Entries of ``base`` changed by ``patch``: a key per entry, ``{removed = true}`` drops it."""
    out = {k: dict(v) for k, v in base.items()}
    for code, change in patch.items():
        if not isinstance(change, Mapping):
            raise CatalogError(f"invalid catalog: entries.{code} must be a table")
        if change.get("removed") is True:
            out.pop(code, None)
        else:
            out[code] = {**out.get(code, {}), **change}
    return out


def _build(doc: Mapping[str, Any], where: str) -> CatalogVersion:
    fixed = {k: v for k, v in doc.items() if k != "inherits"}
    try:
        return CatalogVersion.model_validate(fixed)
    except ValidationError as exc:
        problems = "; ".join(
            f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
            for e in exc.errors())
        raise CatalogError(f"invalid catalog: {problems}") from None


_TOP_KEYS = {"name", "version", "override"}
_OVERRIDE_KEYS = {"region", "versions", "entries"}


def parse_catalog(doc: Mapping[str, Any]) -> Catalog:
    """Build a Catalog from a parsed TOML document, naming any bad key or value."""
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise CatalogError(f"invalid catalog: unknown top-level key(s) {sorted(unknown)}")
    versions = doc.get("version")
    if not isinstance(versions, list) or not versions:
        raise CatalogError("invalid catalog: at least one [[version]] is required")
    by_id: dict[str, dict[str, Any]] = {}
    for i, v in enumerate(versions):
        if not isinstance(v, dict) or not isinstance(v.get("id"), str):
            raise CatalogError(f"invalid catalog: version[{i}].id must be a string")
        if v["id"] in by_id:
            raise CatalogError(f"invalid catalog: version[{i}].id {v['id']!r} is repeated")
        parent = v.get("inherits")
        entries = v.get("entries", {})
        if parent is not None:
            if parent not in by_id:
                raise CatalogError(f"invalid catalog: version[{v['id']}].inherits {parent!r} "
                                   "is not an earlier version")
            entries = _patch_entries(by_id[parent]["entries"], entries)
        elif any(isinstance(e, Mapping) and e.get("removed") for e in entries.values()):
            raise CatalogError(f"invalid catalog: version[{v['id']}] removes entries but "
                               "inherits nothing")
        by_id[v["id"]] = {**v, "entries": entries}
    complete = sorted(by_id.values(), key=lambda v: v.get("effective_from") or dt.date.min)
    overrides = doc.get("override", [])
    if not isinstance(overrides, list):
        raise CatalogError("invalid catalog: override must be an array of tables [[override]]")
    for i, o in enumerate(overrides):
        bad = set(o) - _OVERRIDE_KEYS
        if bad:
            raise CatalogError(f"invalid catalog: override[{i}] has unknown key(s) {sorted(bad)}")
        region = o.get("region")
        if not isinstance(region, str) or len(region) != 6 or not region.isdigit():
            raise CatalogError(f"invalid catalog: override[{i}].region must be a 6-digit "
                               f"region code, got {region!r}")
        vs = o.get("versions")
        if vs is not None and (not isinstance(vs, list) or not set(vs) <= set(by_id)):
            raise CatalogError(f"invalid catalog: override[{i}].versions {vs!r} names "
                               "unknown versions")
    return Catalog(str(doc.get("name", "catalog")), complete, overrides)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load a catalog TOML file; the default national catalog when ``path`` is None."""
    return parse_catalog(read_toml(path, "catalog.toml", CatalogError, "catalog"))
