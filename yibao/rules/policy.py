"""Policy as data: the benefit parameters of settlement.md, versioned by effective date.

Why pydantic here (and msgspec for events): a policy file is written by people at a bureau,
rarely, and a bad key must be named with its full location (``version[1].scheme.resident.
outpatient_cap``); speed is irrelevant. The engine reads the resulting frozen models, whose
attribute access is as cheap as a plain object's.

A version either lists every parameter or ``inherits`` another and lists only changes (the
2025 column of the national table). Region overrides patch any parameter of a version for
persons insured in that region.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from yibao.rules.data import read_toml
from yibao.rules.exceptions import PolicyError

Bp = int  # basis points


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SchemePolicy(_Frozen):
    b_first_self_pay: int = Field(ge=0, le=10000)
    inpatient_deductible: tuple[int, int, int]
    inpatient_rate: tuple[Bp, Bp, Bp]
    retiree_inpatient_bonus: int
    outpatient_deductible: int = Field(ge=0)
    outpatient_rate: tuple[Bp, Bp, Bp]
    retiree_outpatient_bonus: int
    outpatient_cap: int = Field(ge=0)
    chronic_rate: Bp = Field(ge=0, le=10000)
    chronic_cap: dict[str, int]
    pooled_cap: int = Field(ge=0)
    major_threshold: int = Field(ge=0)
    major_tiers: tuple[tuple[int, Bp], ...] = Field(min_length=1)
    major_cap: int = Field(ge=0)
    assistance_major_bonus: int
    cross_province_penalty: int

    @field_validator("inpatient_deductible")
    @classmethod
    def _non_negative(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(x < 0 for x in v):
            raise ValueError("amounts must be >= 0")
        return v

    @field_validator("major_tiers")
    @classmethod
    def _tiers(cls, v: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        if v[0][0] != 0:
            raise ValueError("the first tier must start at 0 (measured above the threshold)")
        for (a, _), (b, _) in itertools.pairwise(v):
            if b <= a:
                raise ValueError("tier starts must increase")
        return v


class AssistancePolicy(_Frozen):
    deductible: int = Field(ge=0)
    rate: Bp = Field(ge=0, le=10000)
    cap: int = Field(ge=0)


class SpecialDisease(_Frozen):
    limit: int | None = Field(default=None, ge=0)


class PolicyVersion(_Frozen):
    """One complete version of the policy (after inheritance and region overrides)."""

    id: str = Field(min_length=1)
    effective_from: dt.date
    scheme: dict[Literal["employee", "resident"], SchemePolicy]
    assistance: dict[Literal["extreme_poverty", "low_income", "marginal"], AssistancePolicy]
    chronic_conditions: dict[str, tuple[str, ...]]
    special_diseases: dict[str, SpecialDisease]

    @model_validator(mode="after")
    def _complete(self) -> PolicyVersion:
        for s in ("employee", "resident"):
            if s not in self.scheme:
                raise ValueError(f"scheme.{s} is missing")
        for c in ("extreme_poverty", "low_income", "marginal"):
            if c not in self.assistance:
                raise ValueError(f"assistance.{c} is missing")
        for name, pol in self.scheme.items():
            unknown = set(pol.chronic_cap) - set(self.chronic_conditions)
            if unknown:
                raise ValueError(f"scheme.{name}.chronic_cap names unknown conditions {unknown}")
        return self


class Policy:
    """All versions of a policy, with region overrides resolved lazily and cached."""

    def __init__(
        self, name: str, raw_versions: list[dict[str, Any]], overrides: list[dict[str, Any]]
    ) -> None:
        self.name = name
        self._raw = raw_versions  # complete (inheritance applied), sorted by effective_from
        self._overrides = overrides
        self.versions: tuple[PolicyVersion, ...] = tuple(
            _build(v, f"version[{v['id']}]") for v in raw_versions
        )
        self._dates = [v.effective_from for v in self.versions]
        self._regional: dict[tuple[str, int], PolicyVersion] = {}
        for region in {o["region"] for o in overrides}:  # validate every override up front
            for i in range(len(self.versions)):
                self._for_region(region, i)

    @cached_property
    def newest(self) -> PolicyVersion:
        return self.versions[-1]

    def version_index(self, d: dt.date) -> int:
        """Index of the version with the greatest effective_from <= d, or -1."""
        idx = -1
        for i, start in enumerate(self._dates):
            if start <= d:
                idx = i
        return idx

    def for_region(self, region: str, index: int) -> PolicyVersion:
        """Version ``index`` as it applies to persons insured in ``region``."""
        key = (region, index)
        hit = self._regional.get(key)
        if hit is None:
            hit = self._for_region(region, index)
        return hit

    def _for_region(self, region: str, index: int) -> PolicyVersion:
        key = (region, index)
        base = self.versions[index]
        patches = [
            o
            for o in self._overrides
            if _region_matches(o["region"], region)
            and (o.get("versions") is None or base.id in o["versions"])
        ]
        if not patches:
            self._regional[key] = base
            return base
        # Province-wide overrides first, then the exact region: the more specific wins.
        patches.sort(key=lambda o: o["region"] == region)
        doc = self._raw[index]
        for o in patches:
            doc = _merge(doc, {k: v for k, v in o.items() if k not in ("region", "versions")})
        built = _build(doc, f"override[{region}].version[{base.id}]")
        self._regional[key] = built
        return built


def _region_matches(pattern: str, region: str) -> bool:
    if pattern == region:
        return True
    return pattern.endswith("0000") and pattern[:2] == region[:2]


def _merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _build(doc: Mapping[str, Any], where: str) -> PolicyVersion:
    fixed = _to_tuples(dict(doc))
    fixed.pop("inherits", None)
    try:
        return PolicyVersion.model_validate(fixed, strict=False)
    except ValidationError as exc:
        problems = "; ".join(
            f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
            for e in exc.errors()
        )
        raise PolicyError(f"invalid policy: {problems}") from None


def _to_tuples(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_tuples(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(_to_tuples(v) for v in obj)
    return obj


_TOP_KEYS = {"name", "version", "override"}
_OVERRIDE_KEYS = {
    "region",
    "versions",
    "scheme",
    "assistance",
    "chronic_conditions",
    "special_diseases",
}


def parse_policy(doc: Mapping[str, Any]) -> Policy:
    """Build a Policy from a parsed TOML document, naming any bad key or value."""
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise PolicyError(f"invalid policy: unknown top-level key(s) {sorted(unknown)}")
    versions = doc.get("version")
    if not isinstance(versions, list) or not versions:
        raise PolicyError("invalid policy: at least one [[version]] is required")
    by_id: dict[str, dict[str, Any]] = {}
    complete: list[dict[str, Any]] = []
    for i, v in enumerate(versions):
        if not isinstance(v, dict) or not isinstance(v.get("id"), str):
            raise PolicyError(f"invalid policy: version[{i}].id must be a string")
        if v["id"] in by_id:
            raise PolicyError(f"invalid policy: version[{i}].id {v['id']!r} is repeated")
        parent = v.get("inherits")
        if parent is not None:
            if parent not in by_id:
                raise PolicyError(
                    f"invalid policy: version[{v['id']}].inherits {parent!r} is not an earlier version"
                )
            full = _merge(by_id[parent], v)
        else:
            full = dict(v)
        by_id[v["id"]] = full
        complete.append(full)
    complete.sort(key=lambda v: v.get("effective_from") or dt.date.min)
    overrides = doc.get("override", [])
    if not isinstance(overrides, list):
        raise PolicyError("invalid policy: override must be an array of tables [[override]]")
    for i, o in enumerate(overrides):
        bad = set(o) - _OVERRIDE_KEYS
        if bad:
            raise PolicyError(f"invalid policy: override[{i}] has unknown key(s) {sorted(bad)}")
        region = o.get("region")
        if not isinstance(region, str) or len(region) != 6 or not region.isdigit():
            raise PolicyError(
                f"invalid policy: override[{i}].region must be a 6-digit region code, got {region!r}"
            )
        vs = o.get("versions")
        if vs is not None and (not isinstance(vs, list) or not set(vs) <= set(by_id)):
            raise PolicyError(
                f"invalid policy: override[{i}].versions {vs!r} names unknown versions"
            )
    return Policy(str(doc.get("name", "policy")), complete, overrides)


def load_policy(path: str | Path | None = None) -> Policy:
    """Load a policy TOML file; the default national policy when ``path`` is None."""
    return parse_policy(read_toml(path, "national.toml", PolicyError, "policy"))
