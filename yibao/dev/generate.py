"""Synthetic event logs: ``yibao generate``.

Writes a JSONL log of input events (../shared/spec/events.md, schema_version 1) for ``N``
households over a date range, deterministic for a seed: the same arguments give the same
bytes on every run and machine (one ``random.Random`` per household, seeded from the seed and
the household number, plus one for the writer; never the global generator or the clock).

How it works
------------
Each household is a small discrete-event simulation (:class:`_Household`): persons with an
age, a scheme, a region, chronic conditions, special diseases, credit lines and so on; a local
heap of scheduled actions (a registration, the next visit, a charge, a checkout, a payment,
a monthly repayment, ...). Popping an action updates the household's plans and returns the
event it publishes. The households' event streams are merged by ``occurred_at`` with
:func:`heapq.merge` (ties: household number, then order of scheduling), so the log is sorted
and a household's timeline is consistent (registration before visits; a visit's open before
its charges before its checkout before its payments and refunds).

Each household's events go through the settlement engine as they are made (decoded by the
contract's codec, decided and evolved by :class:`yibao.rules.engine.Engine` under the national
default policy, on a :class:`yibao.rules.state.State` of the household's own: what the live
processor keeps per household key). Payments and repayments are sized from that state, so
most are accepted and the rejected ones are the deliberate ones (over-payments, deposits
before checkout, credit without a line or over the limit, repayments above the balance).
Why the engine and not a copy of the rules: a copy drifts whenever settlement.md or the
policy file changes, and every drift turns sized payments into spurious rejections; one
source of truth also means a region override in the policy moves the sizing with it. The
engine is pure, so this needs no broker and keeps the log deterministic.

Mixed in at low rates: well-formed events that the rules must reject (a second registration,
family aid across households, a visit opened twice, charges after checkout, a second
checkout, refunds of unsettled visits, visits of deceased or suspended persons, ...), exact
duplicate lines (a repeated ``event_id``), and, at ``bad_rate``, malformed lines of many kinds
(invalid or truncated JSON, unknown type or field, missing or ill-typed field, bad ids,
regions, timestamps or enums, ``amount_fen`` != ``quantity × unit_price_fen``, a retired
resident, an ``outpatient_special`` visit without its code, a credit payment without a bank,
a negative amount). A malformed line is an extra line (a corrupted copy of the event just
written, with its own ``event_id``): the good events alone are the consistent log.
"""

from __future__ import annotations

import gc
import heapq
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import IO, Any, NamedTuple

import msgspec

from yibao.clock import DAY_MS, OFFSET_MS, OFFSET_TEXT, local_day, local_midnight_ms
from yibao.rules.engine import Engine
from yibao.rules.policy import load_policy
from yibao.rules.state import Person, State, Visit
from yibao.schemas.codec import Codec
from yibao.schemas.events import AuditFlagRaised, ClaimRejected, ClaimSettled, OutputEvent

Event = dict[str, Any]
Action = Callable[[int, Any], "Event | None"]

__all__ = ["GenerateConfig", "GenerateStats", "generate", "generate_to_path"]

# ---------------------------------------------------------------------------------- time

HOUR_MS = 3_600_000
MIN_MS = 60_000
_EPOCH_ORD = date(1970, 1, 1).toordinal()
_DATE_STR: dict[int, str] = {}


def _day(d: date) -> int:
    """A calendar date as days since 1970-01-01."""
    return d.toordinal() - _EPOCH_ORD


def _date_str(dn: int) -> str:
    s = _DATE_STR.get(dn)
    if s is None:
        s = _DATE_STR[dn] = date.fromordinal(_EPOCH_ORD + dn).isoformat()
    return s


def _ts(ms: int, utc: bool, millis: bool = True) -> str:
    """RFC 3339 with an offset: ``+08:00`` (China) or, when ``utc``, ``+00:00``."""
    if utc:
        t, off = ms, "+00:00"
    else:
        t, off = ms + OFFSET_MS, OFFSET_TEXT
    dn, r = divmod(t, DAY_MS)
    h, r = divmod(r, HOUR_MS)
    m, r = divmod(r, MIN_MS)
    s, f = divmod(r, 1000)
    if millis:
        return f"{_date_str(dn)}T{h:02d}:{m:02d}:{s:02d}.{f:03d}{off}"
    return f"{_date_str(dn)}T{h:02d}:{m:02d}:{s:02d}{off}"


def _at_local(dn: int, tod_ms: int) -> int:
    """The instant of ``tod_ms`` after midnight (UTC+08:00) of day ``dn``."""
    return local_midnight_ms(dn) + tod_ms


def _month_start(dn: int) -> int:
    d = date.fromordinal(_EPOCH_ORD + dn)
    return _day(d.replace(day=1))


# ------------------------------------------------------------------------- geography

_REGIONS: dict[str, tuple[str, int]] = {  # region -> (name, weight as insured region)
    "500000": ("重庆市", 8),
    "500101": ("万州区", 6),
    "500103": ("渝中区", 8),
    "500106": ("沙坪坝区", 7),
    "500112": ("渝北区", 10),
    "500113": ("巴南区", 5),
    "110000": ("北京市", 4),
    "110105": ("朝阳区", 4),
    "110108": ("海淀区", 4),
    "310000": ("上海市", 5),
    "310115": ("浦东新区", 4),
    "440100": ("广州市", 3),
    "440300": ("深圳市", 4),
    "510100": ("成都市", 6),
    "510107": ("武侯区", 2),
    "530100": ("昆明市", 5),
    "420100": ("武汉市", 4),
    "330100": ("杭州市", 3),
    "610100": ("西安市", 3),
    "520100": ("贵阳市", 3),
    "460100": ("海口市", 1),
    "460200": ("三亚市", 1),
}
_REGION_LIST = list(_REGIONS)
_REGION_W = [w for _, w in _REGIONS.values()]
_PROVINCE: dict[str, list[str]] = {}
for _r in _REGIONS:
    _PROVINCE.setdefault(_r[:2], []).append(_r)
# Where people go for care in another province: big hospitals, neighbours, where retirees winter.
_AWAY_W = {
    "110000": 6,
    "310000": 6,
    "510100": 4,
    "500000": 4,
    "440300": 2,
    "460200": 3,
    "530100": 3,
    "420100": 2,
    "330100": 2,
    "610100": 1,
    "520100": 2,
}
_FACILITIES_PER_REGION = 30
_BANKS = ("ICBC", "CCB", "ABC", "BOC", "CQRCB", "CMB", "BOCOM")
_BANK_W = (5, 5, 3, 3, 4, 2, 1)


class _Facility(NamedTuple):
    fid: str
    level: int
    region: str
    source: str


def _build_facilities() -> dict[str, tuple[list[_Facility], list[_Facility], list[_Facility]]]:
    """Per region: facilities of level 1, 2 and 3 (fixed, independent of the seed)."""
    out = {}
    for region in _REGIONS:
        rng = random.Random(f"facilities:{region}")
        by_level: tuple[list[_Facility], list[_Facility], list[_Facility]] = ([], [], [])
        for n in range(10, 10 + _FACILITIES_PER_REGION):
            level = 3 if n < 14 else 2 if n < 22 else 1
            if rng.random() < 0.15:
                level = rng.choice((1, 2, 3))
            f = _Facility(f"F{region}{n:02d}", level, region, f"gw-{region}-{n}")
            by_level[level - 1].append(f)
        out[region] = by_level
    return out


_FACILITIES = _build_facilities()

# ------------------------------------------------------------------------- the catalog


class _Item(NamedTuple):
    code: str
    name: str
    category: str
    cls: str
    prices: tuple[int, int, int]  # unit price (fen) at level 1, 2, 3
    cap_unit: int | None  # reimbursable ceiling per unit (centrally procured price)


def _items(category: str, rows: list[tuple[str, str, str, int, int]]) -> list[_Item]:
    """rows: (code stem, name, class, unit price in fen at level 2, cap % of it or 0)."""
    out = []
    for i, (stem, name, cls, price, cap_pct) in enumerate(rows):
        if category == "drug":
            # 医保药品分类与代码: X/Z + class + generic + dosage form + spec + maker (23 chars).
            code = f"{stem}A{(i * 37) % 1000:03d}A{1 + i % 7:03d}{10 + i % 3:03d}{100000 + i * 7919:06d}"
        elif category == "service":
            code = f"00{stem}0000"  # 医疗服务项目 15-char code
        else:
            code = f"C{stem}{(i * 104729) % 10**9:09d}"  # 医用耗材 20-char code
        prices = (price * 90 // 100, price, price * 112 // 100)
        cap = price * cap_pct // 100 if cap_pct else None
        out.append(_Item(code, name, category, cls, prices, cap))
    return out


# fmt: off
_D_OP = _items("drug", [
    ("XJ01CA", "阿莫西林胶囊", "A", 1200, 90), ("XJ01DC", "头孢克洛缓释片", "B", 3200, 0),
    ("XM01AE", "布洛芬缓释胶囊", "A", 1500, 85), ("XR05CB", "盐酸氨溴索片", "A", 900, 0),
    ("XA02BC", "奥美拉唑肠溶胶囊", "A", 1800, 70), ("XA07BC", "蒙脱石散", "A", 1100, 0),
    ("XR06AX", "氯雷他定片", "B", 2200, 0), ("ZA01AA", "连花清瘟胶囊", "B", 1450, 0),
    ("XJ01MA", "左氧氟沙星片", "B", 2600, 80), ("XJ01FA", "阿奇霉素片", "A", 1900, 0),
    ("XA11GA", "维生素C片", "C", 500, 0), ("XA11AA", "复合维生素片", "C", 6800, 0),
    ("ZA04AA", "蓝芩口服液", "B", 2900, 0), ("XD07AC", "糠酸莫米松乳膏", "B", 3100, 0),
    ("XS01AA", "左氧氟沙星滴眼液", "A", 1600, 0), ("XN02BE", "对乙酰氨基酚片", "A", 700, 0),
])
_D_HTN = _items("drug", [
    ("XC08CA", "硝苯地平控释片", "A", 3300, 60), ("XC08CB", "苯磺酸氨氯地平片", "A", 1600, 50),
    ("XC09CA", "缬沙坦胶囊", "B", 2800, 60), ("XC07AB", "酒石酸美托洛尔片", "A", 1200, 0),
    ("XC03AA", "氢氯噻嗪片", "A", 400, 0), ("XC10AA", "阿托伐他汀钙片", "B", 2500, 50),
    ("XB01AC", "阿司匹林肠溶片", "A", 1500, 0),
])
_D_DM = _items("drug", [
    ("XA10BA", "盐酸二甲双胍片", "A", 900, 50), ("XA10BB", "格列美脲片", "B", 2400, 0),
    ("XA10BF", "阿卡波糖片", "B", 4200, 60), ("XA10AE", "甘精胰岛素注射液", "B", 7800, 90),
    ("XA10BH", "西格列汀片", "B", 6500, 0),
])
_D_WARD = _items("drug", [
    ("XB05XA", "0.9%氯化钠注射液", "A", 350, 0), ("XB05BA", "5%葡萄糖注射液", "A", 380, 0),
    ("XJ01DD", "注射用头孢曲松钠", "A", 1200, 80), ("XJ01CR", "注射用哌拉西林他唑巴坦", "B", 4500, 0),
    ("XA02BC", "注射用奥美拉唑钠", "B", 2800, 0), ("XB01AB", "低分子肝素钠注射液", "B", 3600, 0),
    ("XJ01DD", "注射用头孢哌酮舒巴坦", "B", 5200, 0), ("XN02AB", "盐酸曲马多注射液", "A", 900, 0),
    ("XB05AA", "人血白蛋白", "B", 38000, 0), ("ZB01AB", "丹参多酚酸盐注射液", "C", 9800, 0),
])
_D_BIG = {
    "cancer": _items("drug", [
        ("XL01CD", "注射用紫杉醇", "B", 180000, 80), ("XL01EB", "甲磺酸奥希替尼片", "B", 510000, 100),
        ("XL01FD", "注射用曲妥珠单抗", "B", 360000, 100), ("XL01FF", "信迪利单抗注射液", "B", 110000, 100),
        ("XL01XA", "注射用奥沙利铂", "A", 42000, 70), ("XA04AA", "盐酸帕洛诺司琼注射液", "B", 12000, 0),
    ]),
    "transplant": _items("drug", [
        ("XL04AD", "他克莫司胶囊", "B", 35000, 0), ("XL04AA", "吗替麦考酚酯胶囊", "B", 21000, 0),
    ]),
    "hemophilia": _items("drug", [("XB02BD", "注射用重组人凝血因子Ⅷ", "B", 70000, 0)]),
    "dialysis": _items("drug", [
        ("XB03XA", "重组人促红素注射液", "B", 9000, 0), ("XB03AC", "蔗糖铁注射液", "B", 6000, 0),
    ]),
    "mental": _items("drug", [
        ("XN05AX", "利培酮片", "A", 2600, 0), ("XN05AH", "奥氮平片", "B", 4800, 60),
    ]),
    "copd": _items("drug", [
        ("XR03BB", "噻托溴铵粉吸入剂", "B", 12000, 0), ("XR03AK", "布地奈德福莫特罗吸入剂", "B", 16800, 0),
    ]),
    "ra": _items("drug", [
        ("XL04AX", "甲氨蝶呤片", "A", 1200, 0), ("XL04AB", "阿达木单抗注射液", "B", 130000, 100),
    ]),
    "parkinsons": _items("drug", [
        ("XN04BA", "卡左双多巴控释片", "B", 8000, 0), ("XN04BC", "盐酸普拉克索片", "B", 9500, 0),
    ]),
    "dm": _D_DM,
    "htn": _D_HTN,
}
_S_CONSULT = _items("service", [
    ("110200001", "普通门诊诊查费", "A", 1000, 0), ("110200002", "副主任医师诊查费", "A", 2500, 0),
    ("110200005", "急诊诊查费", "A", 1500, 0), ("110200009", "特需门诊诊查费", "C", 30000, 0),
])
_S_LAB = _items("service", [
    ("250101015", "血细胞分析", "A", 2000, 0), ("250302001", "葡萄糖测定", "A", 600, 0),
    ("250305004", "丙氨酸氨基转移酶测定", "A", 800, 0), ("250307002", "肌酐测定", "A", 800, 0),
    ("250403008", "C反应蛋白测定", "A", 2500, 0), ("310701001", "常规心电图检查", "A", 1500, 0),
    ("250310014", "糖化血红蛋白测定", "B", 6000, 0), ("250102001", "尿液分析", "A", 1200, 0),
])
_S_IMG = _items("service", [
    ("210102015", "数字化摄影(DR)", "A", 8000, 0), ("220201001", "彩色多普勒超声常规检查", "A", 16000, 0),
    ("210300001", "X线计算机体层(CT)平扫", "B", 25000, 0), ("210400001", "磁共振(MR)平扫", "B", 60000, 0),
])
_S_WARD = _items("service", [
    ("110900001", "普通病房床位费", "A", 6000, 0), ("110400001", "住院诊查费", "A", 2000, 0),
    ("120100003", "Ⅱ级护理", "A", 2800, 0), ("120400001", "静脉输液", "A", 800, 0),
    ("110900004", "重症监护病房床位费", "B", 30000, 0), ("110900005", "特需病房床位费", "C", 40000, 0),
])
_S_SPECIAL = {
    "dialysis": _items("service", [("311000006", "血液透析", "A", 45000, 0)]),
    "cancer": _items("service", [("311201001", "肿瘤化学治疗(静脉注射)", "A", 8000, 0)]),
    "acupuncture": _items("service", [("410000001", "普通针刺", "B", 3000, 0)]),
}
_S_SURGERY = {
    "appendix": _items("service", [("331003008", "阑尾切除术", "A", 150000, 0)]),
    "cataract": _items("service", [("330604021", "白内障超声乳化摘除术+人工晶体植入术", "A", 300000, 0)]),
    "hip": _items("service", [("331502019", "人工髋关节置换术", "B", 450000, 0)]),
    "pci": _items("service", [("310905008", "经皮冠状动脉支架置入术", "A", 380000, 0)]),
    "delivery": _items("service", [("331602001", "单胎顺产接生", "A", 80000, 0)]),
    "cesarean": _items("service", [("331603001", "子宫下段剖宫产术", "A", 160000, 0)]),
    "cancer": _items("service", [("331001004", "肺叶切除术", "A", 520000, 0)]),
}
_S_ANESTHESIA = _items("service", [("330100003", "全身麻醉", "A", 120000, 0)])
_C_BASIC = _items("consumable", [
    ("0201010010", "一次性使用输液器", "A", 300, 0), ("0201010020", "一次性使用无菌注射器", "A", 100, 0),
    ("0201020030", "静脉留置针", "B", 1200, 0), ("0204010010", "医用敷料", "B", 800, 0),
    ("0205010020", "一次性使用导尿管", "A", 900, 0),
])
_C_IMPLANT = {
    "pci": _items("consumable", [("0301010010", "冠状动脉药物洗脱支架", "B", 75000, 95)]),
    "cataract": _items("consumable", [("0302020010", "人工晶状体", "B", 200000, 80)]),
    "hip": _items("consumable", [("0303010010", "髋关节假体", "B", 700000, 90)]),
    "cancer": _items("consumable", [("0304010020", "一次性使用吻合器", "B", 350000, 70)]),
    "appendix": _items("consumable", [("0304020010", "可吸收缝合线(进口)", "C", 50000, 0)]),
    "dialysis": _items("consumable", [("0306010010", "血液透析器", "A", 9000, 0)]),
}
# fmt: on


def _audited(code: str, name: str, category: str, cls: str, price: int) -> _Item:
    """An item coded as in the audit catalog (yibao/rules/catalog.toml): a restricted code."""
    return _Item(code, name, category, cls, (price * 90 // 100, price, price * 112 // 100), None)


# The audit catalog's restricted codes (audit.md "The audit catalog"). Ward bed-days and
# vaginal deliveries carry them in every log made with the audit patterns (used rightly); the
# patterns (yibao/dev/audit_patterns.py) use the others, rightly and, at low rates, wrongly.
AUDITED: dict[str, _Item] = {i.code: i for i in (
    _audited("SVC-BED-WARD", "普通病房床位费", "service", "A", 6000),
    _audited("SVC-BED-ICU", "重症监护病房床位费", "service", "B", 30000),
    _audited("SVC-DELIVERY", "单胎顺产接生", "service", "A", 80000),
    _audited("SVC-PROSTATECTOMY", "经尿道前列腺电切术", "service", "A", 600000),
    _audited("LAB-PSA", "前列腺特异性抗原测定", "service", "A", 6000),
    _audited("LAB-HCG", "β-人绒毛膜促性腺激素测定", "service", "A", 4000),
    _audited("DRUG-PED-AMOX", "阿莫西林颗粒(儿童)", "drug", "A", 1500),
    _audited("SVC-NEONATAL", "新生儿暖箱", "service", "A", 5000),
    _audited("IMG-CT-CHEST", "胸部CT平扫", "service", "B", 25000),
    _audited("IMG-MRI-HEAD", "头颅磁共振平扫", "service", "B", 60000),
    _audited("LAB-HBA1C", "糖化血红蛋白测定", "service", "B", 6000),
    _audited("SVC-HEMODIALYSIS", "血液透析", "service", "A", 45000),
    _audited("SVC-ANES-MONITOR", "麻醉中监测(每小时)", "service", "A", 2000),
)}

# --------------------------------------------------------------------- diagnoses, diseases

_DX_OUTPATIENT = (
    "J06.9",
    "J20.9",
    "K29.7",
    "M54.5",
    "R51",
    "A09",
    "H10.9",
    "L30.9",
    "K02.9",
    "N39.0",
    "J02.9",
    "Z00.0",
    "J18.9",
    "M17.9",
    "R10.4",
)
_DX_EMERGENCY = ("S06.0", "S52.5", "T14.1", "R07.4", "K35.8", "J18.9", "R50.9", "T78.4", "I21.9", "N20.0")


class _InpatientDx(NamedTuple):
    codes: tuple[str, ...]
    median_yuan: int
    sigma: float
    level3: float  # share of admissions to a level-3 hospital
    surgery: str | None
    days: int  # median length of stay
    weight: float  # by age: child, adult, 45-59, 60+ multiplied below


_INPATIENT_DX = [
    _InpatientDx(("J18.9", "J20.9"), 9000, 0.55, 0.4, None, 7, 3.0),
    _InpatientDx(("I63.9", "I61.9"), 25000, 0.6, 0.6, None, 12, 1.5),
    _InpatientDx(("I21.9", "I25.1"), 50000, 0.4, 0.9, "pci", 8, 1.0),
    _InpatientDx(("C34.9", "C50.9", "C16.9", "C18.9", "C22.0"), 40000, 0.8, 0.85, "cancer", 14, 1.0),
    _InpatientDx(("S72.0", "M16.1"), 45000, 0.5, 0.7, "hip", 12, 0.8),
    _InpatientDx(("K35.8",), 13000, 0.35, 0.4, "appendix", 6, 1.0),
    _InpatientDx(("H25.9",), 8000, 0.3, 0.6, "cataract", 3, 1.0),
    _InpatientDx(("J44.1", "I50.9", "E11.9", "N18.6"), 12000, 0.55, 0.5, None, 10, 1.5),
]
_DELIVERY = _InpatientDx(("O80",), 6000, 0.35, 0.5, "delivery", 3, 0.0)
_CESAREAN = _InpatientDx(("O82.0",), 12000, 0.3, 0.6, "cesarean", 5, 0.0)


class _Special(NamedTuple):
    codes: tuple[str, ...]  # ICD-10
    median_yuan: int
    interval: int  # days between visits
    drugs: str
    weight: int


_SPECIALS = {
    "DIALYSIS": _Special(("N18.5", "N18.6"), 4000, 14, "dialysis", 15),
    "CANCER_TX": _Special(("C34.9", "C50.9", "C16.9", "C20"), 8000, 21, "cancer", 20),
    "TRANSPLANT": _Special(("Z94.0", "Z94.4"), 3000, 30, "transplant", 3),
    "SEVERE_MENTAL": _Special(("F20.0", "F31.9"), 500, 30, "mental", 10),
    "DIABETES_COMPLICATED": _Special(("E11.2", "E11.4", "E10.2"), 600, 30, "dm", 15),
    "HYPERTENSION_COMPLICATED": _Special(("I11.9", "I12.0", "I13.0"), 400, 30, "htn", 10),
    "HEMOPHILIA": _Special(("D66",), 12000, 30, "hemophilia", 2),
    "COPD": _Special(("J44.1", "J44.9"), 500, 30, "copd", 12),
    "RHEUMATOID_ARTHRITIS": _Special(("M05.9", "M06.9"), 800, 30, "ra", 6),
    "PARKINSONS": _Special(("G20",), 700, 30, "parkinsons", 7),
}
_SPECIAL_CODES = list(_SPECIALS)
_SPECIAL_W = [s.weight for s in _SPECIALS.values()]
_UNKNOWN_DISEASES = ("GOUT", "ALZHEIMERS", "TB_ACTIVE", "HEPATITIS_B")
_REFUND_REASONS = (
    "billing correction",
    "drug returned",
    "duplicate charge",
    "patient request",
    "退药",
    "费用更正",
    "医保结算错误重结",
)
_METHODS = ("insurance_code_qr", "mobile", "bank_card", "face", "cash")
_METHOD_W = (26, 32, 15, 12, 15)

# ------------------------------------------------------------------------ rates (per year)

P_DUP_LINE = 0.004  # exact duplicate of a line (same event_id)
P_OMIT_NULL = 0.03  # leave out a nullable field that is null (valid: it is then null)
P_DUP_REGISTRATION = 0.004  # per person: PersonRegistered sent again
P_HH_ODDITY = 0.012  # per household-year, for each enrollment oddity below
P_VISIT_ODDITY = 0.0015  # per visit, for each care oddity below
P_REFUND = 0.04
P_REVERSAL = 0.08
P_NO_ACCOUNT = 0.08  # checkout with use_personal_account false


# ---------------------------------------------------------------------------- the people


class _Visit:
    __slots__ = (
        "diagnoses",
        "fac",
        "kind",
        "level",
        "nbatch",
        "npay",
        "open_day",
        "person",
        "special",
        "vid",
    )

    def __init__(
        self,
        vid: str,
        person: _Person,
        fac: _Facility,
        kind: str,
        open_day: int,
        diagnoses: list[str],
        special: str | None,
    ) -> None:
        self.vid = vid
        self.person = person
        self.fac = fac
        self.level = fac.level
        self.kind = kind
        self.open_day = open_day
        self.diagnoses = diagnoses
        self.special = special
        self.nbatch = 0
        self.npay = 0


class _Person:
    """What the generator plans for a person. What the processors hold about them is the
    engine's :class:`yibao.rules.state.Person`, in the household's state."""

    def __init__(self, pid: str, idx: int) -> None:
        self.pid = pid
        self.idx = idx
        self.birth = 0
        self.sex = "M"
        self.scheme = "resident"
        self.retired = False
        self.region = "500000"
        self.source = "bureau-500000"
        self.assistance: str | None = None
        self.eff = 0
        self.opening_balance = 0
        self.conditions: list[str] = []  # "hypertension", "diabetes"
        self.special: str | None = None
        self.special_until = 0  # planned: the last day certified
        self.death: int | None = None  # planned day of death
        self.death_lag: int | None = None  # planned: days until the death is registered
        self.filing: tuple[str, int, int] | None = None  # planned: region, from, to
        self.banks: list[str] = []  # planned credit lines
        self.busy_until = 0

    def age(self, dn: int) -> int:
        return (dn - self.birth) * 100 // 36525


# ------------------------------------------------------------------------- a household


def _lognormal_fen(rng: random.Random, median_yuan: float, sigma: float, lo: int, hi: int) -> int:
    v = median_yuan * 100 * math.exp(rng.gauss(0.0, sigma))
    return int(min(max(v, lo * 100), hi * 100))


Line = tuple[_Item, int, int, int | None]  # item, quantity, unit price, cap_fen


class Steer(NamedTuple):
    """How an audit pattern (yibao/dev/audit_patterns.py) wants a visit: where, with which
    diagnoses (None: the usual draw), how many days in hospital (0: the usual draw), and
    lines charged on top of the usual ones."""

    fac: _Facility
    diagnoses: tuple[str, ...] | None = None
    days: int = 0
    extra: tuple[Line, ...] = ()


OpenArg = tuple[_Person, str, _InpatientDx | None] | tuple[_Person, str, _InpatientDx | None, Steer]
# The engine wants a valid event_id; the writer numbers events in log order, later.
_UNNUMBERED = "E00000000"


class _Household:
    def __init__(self, gen: _Generator, idx: int) -> None:
        self.gen = gen
        self.idx = idx
        self.hid = f"H{idx:06d}"
        self.rng = random.Random(f"yibao-generate:{gen.seed}:{idx}")
        self.heap: list[tuple[int, int, Action, Any]] = []
        self.seq = 0
        self.nvisit = 0
        self.persons: list[_Person] = []
        self.state = State()
        self._folded: Event | None = None
        self.start = gen.start_ms
        self.end = gen.end_ms
        self.years = max(gen.days / 365.0, 1 / 365)
        self.reg_day = gen.start_day  # the household's registration day, set by the plan
        self._plan()

    def close(self) -> None:
        self.heap.clear()
        self.persons.clear()
        self.state.persons.clear()

    # -- the processors' view ----------------------------------------------------------------

    def fold(self, e: Event) -> list[OutputEvent]:
        """Settle ``e`` on the household's state, exactly as the processors will (the codec's
        decoding included, so defaults of omitted fields agree); its outputs."""
        self._folded = e
        return self.gen.engine.apply(self.state, self.gen.decode(self.gen.encode(e)))

    def held(self, p: _Person) -> Person | None:
        """What the processors hold about ``p`` (None until an event names them): sizing reads
        this, never the plan, so a sized payment cannot disagree with them."""
        return self.state.persons.get(p.pid)

    def held_visit(self, v: _Visit) -> Visit | None:
        p = self.state.persons.get(v.person.pid)
        return p.visits.get(v.vid) if p is not None else None

    # -- scheduling --------------------------------------------------------------------------

    def at(self, ms: int, fn: Action, arg: Any = None) -> None:
        if ms < self.end:
            heapq.heappush(self.heap, (ms, self.seq, fn, arg))
            self.seq += 1

    def run(self) -> Iterator[tuple[int, int, int, Event]]:
        heap, idx, end = self.heap, self.idx, self.end
        pop = heapq.heappop
        while heap:
            ms, seq, fn, arg = pop(heap)
            if ms >= end:
                return
            ev = fn(ms, arg)
            if ev is not None:
                if ev is not self._folded:  # an action that needed its outcome folded it itself
                    self.fold(ev)
                yield ms, idx, seq, ev

    def pid(self, i: int) -> str:
        return f"P{self.idx * 10 + i:07d}"

    def chance(self, p_per_year: float) -> bool:
        return self.rng.random() < p_per_year * self.years

    def when(self, lo: int | None = None, hi: int | None = None) -> int:
        """A random office-hours instant on a random day in [lo, hi) (days)."""
        rng = self.rng
        lo = self.gen.start_day if lo is None else lo
        hi = self.gen.end_day if hi is None else hi
        dn = rng.randrange(lo, max(hi, lo + 1))
        return _at_local(dn, rng.randrange(8 * HOUR_MS, 18 * HOUR_MS))

    def env(self, typ: str, ms: int, source: str, pid: str) -> Event:
        return {
            "type": typ,
            "event_id": _UNNUMBERED,
            "schema_version": 1,
            "occurred_at": _ts(ms, self.rng.random() < 0.25),
            "source": source,
            "person_id": pid,
        }

    # -- the plan ----------------------------------------------------------------------------

    def _plan(self) -> None:
        rng, g = self.rng, self.gen
        late = rng.random() < 0.08  # a household enrolled during the period
        if late:
            reg_day = rng.randrange(g.start_day, g.start_day + max(1, g.days * 85 // 100))
        else:
            reg_day = g.start_day + rng.randrange(0, max(1, min(28, g.days // 10)))
        reg_ms = _at_local(reg_day, rng.randrange(8 * HOUR_MS, 17 * HOUR_MS))
        self.reg_day = reg_day
        region = rng.choices(_REGION_LIST, _REGION_W)[0]
        big_city = region[:2] in ("11", "31", "44")
        members = self._composition(reg_day)
        r = rng.random()
        assistance = (
            "low_income"
            if r < 0.04
            else "marginal"
            if r < 0.065
            else "extreme_poverty"
            if r < 0.08 and (len(members) == 1 or members[0][0] >= 60)
            else None
        )
        for i, (age, sex) in enumerate(members):
            p = _Person(self.pid(i), i)
            p.sex = sex
            p.birth = reg_day - age * 36525 // 100 - rng.randrange(365)
            p.region = region if rng.random() < 0.92 else rng.choices(_REGION_LIST, _REGION_W)[0]
            p.source = f"bureau-{p.region[:2]}0000"
            p.assistance = assistance
            if assistance is None and age >= 22:
                employed = rng.random() < (0.7 if big_city else 0.55)
                if employed:
                    p.scheme = "employee"
                    p.retired = age >= 60 or (sex == "F" and age >= 55 and rng.random() < 0.6)
            if late:  # from the first of next month, or backdated a little
                next_month = _month_start(_month_start(reg_day) + 31)
                p.eff = next_month if rng.random() < 0.5 else reg_day - rng.randrange(20)
            else:
                p.eff = max(p.birth, reg_day - rng.randrange(30, 3650))
            if p.scheme == "employee":
                median = 9000 if p.retired else 3000
                p.opening_balance = _lognormal_fen(rng, median, 0.9, 0, 60000)
            self._plan_health(p, reg_day)
            self.persons.append(p)
        for i, p in enumerate(self.persons):
            self.at(reg_ms + i, self._a_register, p)
            if rng.random() < P_DUP_REGISTRATION:
                self.at(self.when(reg_day + 1, reg_day + 30), self._a_register, p)
        if g.audit_patterns:  # before the enrollment plan: a pattern may register a death late
            from yibao.dev.audit_patterns import plan_person_patterns

            plan_person_patterns(self)
        self._plan_enrollment(reg_day, reg_ms + HOUR_MS)
        for p in self.persons:
            self._start_streams(p, reg_ms + HOUR_MS)
        self._plan_births(reg_day)
        self._plan_oddities(reg_day)

    def _composition(self, reg_day: int) -> list[tuple[int, str]]:
        rng = self.rng
        sex = rng.choice("MF")
        other = "F" if sex == "M" else "M"
        r = rng.random()
        head = rng.randrange(25, 60)
        if r < 0.12:
            return [(rng.randrange(60, 92), sex)]
        if r < 0.22:
            return [(rng.randrange(22, 60), sex)]
        if r < 0.30:  # elderly couple
            a = rng.randrange(60, 88)
            return [(a, sex), (max(55, a + rng.randrange(-5, 6)), other)]
        couple = [(head, sex), (max(20, head + rng.randrange(-4, 5)), other)]
        if r < 0.45:
            return couple
        kids = [(max(0, head - rng.randrange(22, 36)), rng.choice("MF"))]
        if r < 0.65:
            return couple + kids
        kids.append((max(0, kids[0][0] - rng.randrange(1, 8)), rng.choice("MF")))
        if r < 0.77:
            return couple + kids
        if r < 0.81:
            return [couple[0], kids[0]]
        grand = [(min(95, head + rng.randrange(22, 32)), rng.choice("MF"))]
        if rng.random() < 0.5:
            grand.append((min(95, grand[0][0] + rng.randrange(-4, 5)), "F" if grand[0][1] == "M" else "M"))
        return couple + kids[: rng.randrange(1, 3) if len(grand) == 1 else 1] + grand

    def _plan_health(self, p: _Person, reg_day: int) -> None:
        rng = self.rng
        age = p.age(reg_day)
        htn = 0.0 if age < 35 else 0.12 if age < 45 else 0.2 if age < 60 else 0.38
        dm = 0.0 if age < 35 else 0.04 if age < 45 else 0.08 if age < 60 else 0.16
        if rng.random() < htn:
            p.conditions.append("hypertension")
        if rng.random() < dm:
            p.conditions.append("diabetes")
        sp = 0.004 if age < 40 else 0.02 if age < 60 else 0.05
        if rng.random() < sp:
            p.special = self._special_code()
        mort = 0.002 if age < 60 else 0.015 if age < 75 else 0.05 if age < 85 else 0.12
        if self.chance(mort):
            p.death = rng.randrange(reg_day + 1, max(reg_day + 2, self.gen.end_day))

    def _plan_enrollment(self, reg_day: int, ms: int) -> None:
        """Family aid, certifications, filings and credit lines; account credits, assistance
        changes, suspensions, deaths and repayments over the period."""
        rng = self.rng
        persons = self.persons
        employees = [p for p in persons if p.scheme == "employee"]
        step = 1
        if employees and len(persons) > 1 and rng.random() < 0.5:
            payer = rng.choice(employees)
            for b in persons:
                if b is not payer and rng.random() < 0.8:
                    self.at(ms + step, self._a_aid, (payer, b.pid))
                    step += 1
                    if self.chance(0.03):  # revoked later, sometimes granted again
                        t = self.when(reg_day + 1)
                        self.at(t, self._a_revoke, (payer, b.pid))
                        if rng.random() < 0.5:
                            self.at(t + rng.randrange(30, 200) * DAY_MS, self._a_aid, (payer, b.pid))
        for p in persons:
            age = p.age(reg_day)
            if p.special is not None:
                length = rng.choice((365, 730, 1095))
                frm = reg_day - rng.randrange(0, length - 30)
                self._certify(p, p.special, frm, length, ms + step)
                step += 1
                iv = _SPECIALS[p.special].interval
                self.at(ms + rng.randrange(0, iv * DAY_MS), self._a_special, p)
            elif self.chance(0.006 if age >= 40 else 0.001):  # diagnosed during the period
                p.special = self._special_code()
                t = self.when(reg_day + 1)
                self._certify(p, p.special, local_day(t), rng.choice((365, 730)), t)
                self.at(t + rng.randrange(1, 10) * DAY_MS, self._a_special, p)
            if age >= 18 and rng.random() < (0.07 if p.retired else 0.025):
                away = self._away_region(p.region)
                frm = reg_day - rng.randrange(0, 300)
                p.filing = (away, frm, frm + rng.choice((365, 730)) - 1)
                self.at(ms + step, self._a_filing, (p, *p.filing))
                step += 1
            elif age >= 18 and self.chance(0.01):
                away = self._away_region(p.region)
                t = self.when(reg_day + 1)
                frm = local_day(t)
                p.filing = (away, frm, frm + rng.randrange(180, 731))
                self.at(t, self._a_filing, (p, *p.filing))
            if age >= 18 and rng.random() < (0.2 if p.region[:2] == "50" else 0.1):
                bank = "CQRCB" if p.region[:2] == "50" and rng.random() < 0.5 else self._bank()
                p.banks.append(bank)
                self.at(ms + step, self._a_credit_line, (p, bank, self._limit()))
                step += 1
            if age >= 18 and self.chance(0.02):  # a new line (or a new limit) later
                bank = rng.choice(p.banks) if p.banks and rng.random() < 0.4 else self._bank()
                if bank not in p.banks:
                    p.banks.append(bank)
                self.at(self.when(reg_day + 1), self._a_credit_line, (p, bank, self._limit()))
            if p.banks:
                self.at(ms + rng.randrange(20, 40) * DAY_MS, self._a_repay, p)
            if p.scheme == "employee":
                self.at(ms + rng.randrange(1, 91) * DAY_MS, self._a_account_credit, p)
            if self.chance(0.06):
                t = self.when(reg_day + 1)
                cats = [c for c in (None, "low_income", "marginal", "extreme_poverty") if c != p.assistance]
                new = rng.choice(cats)
                eff = _month_start(local_day(t))
                if rng.random() < 0.3:
                    eff = _month_start(eff - rng.randrange(1, 80))  # backdated
                self.at(t, self._a_assist, (p, new, eff))
            if self.chance(0.03):
                t = self.when(reg_day + 1)
                d = local_day(t)
                eff = d if rng.random() < 0.6 else _month_start(d)
                self.at(t, self._a_enrollment, (p, "EnrollmentSuspended", eff))
                if rng.random() < 0.85:
                    t2 = t + rng.randrange(20, 180) * DAY_MS
                    eff2 = local_day(t2) if rng.random() < 0.7 else eff
                    self.at(t2, self._a_enrollment, (p, "EnrollmentResumed", eff2))
            if p.death is not None:
                lag = rng.randrange(0, 21)
                if p.death_lag is not None:  # registered late (an audit pattern)
                    lag = p.death_lag
                t = _at_local(p.death + lag, rng.randrange(8 * HOUR_MS, 18 * HOUR_MS))
                self.at(max(t, ms + step), self._a_death, (p, p.death))
                step += 1
                if rng.random() < 0.3:  # a visit under a dead person's name: PERSON_DECEASED
                    t = self.when(p.death + 25, p.death + 60)
                    self.at(t, self._a_open, (p, rng.choice(("outpatient", "outpatient_chronic")), None))

    def _certify(self, p: _Person, code: str, frm: int, length: int, ms: int) -> None:
        """Certify ``code`` from ``frm`` for ``length`` days at ``ms``; plan the renewals."""
        rng = self.rng
        to = frm + length - 1
        p.special_until = max(p.special_until, to)
        self.at(ms, self._a_certify, (p, code, frm, to))
        if to < self.gen.end_day and rng.random() < 0.85:  # renewal, sometimes late
            t = _at_local(to + rng.randrange(-30, 26), rng.randrange(8 * HOUR_MS, 18 * HOUR_MS))
            frm2 = to + 1 if rng.random() < 0.7 else local_day(t)
            self._certify(p, code, frm2, rng.choice((365, 730)), max(t, ms + 1))

    def _special_code(self) -> str:
        """A disease to certify; mostly one the policy covers when the log starts, since an
        uncovered one only yields SPECIAL_DISEASE_NOT_CERTIFIED rejections."""
        g = self.gen
        code = self.rng.choices(_SPECIAL_CODES, _SPECIAL_W)[0]
        if code not in g.covered and g.covered_codes and self.rng.random() < 0.75:
            code = self.rng.choices(g.covered_codes, g.covered_w)[0]
        return code

    def _plan_births(self, reg_day: int) -> None:
        rng = self.rng
        mothers = [p for p in self.persons if p.sex == "F" and 22 <= p.age(reg_day) <= 38]
        if not mothers or len(self.persons) >= 5 or not self.chance(0.04):
            return
        mother = mothers[0]
        birth = rng.randrange(reg_day + 30, max(reg_day + 31, self.gen.end_day))
        dx = _CESAREAN if rng.random() < 0.4 else _DELIVERY
        admit = _at_local(birth - rng.randrange(0, 2), rng.randrange(0, DAY_MS))
        self.at(admit, self._a_open, (mother, "inpatient", dx))
        baby = _Person(self.pid(len(self.persons)), len(self.persons))
        baby.birth = birth
        baby.eff = birth
        baby.sex = rng.choice("MF")
        baby.region = mother.region
        baby.source = mother.source
        baby.assistance = mother.assistance
        self.persons.append(baby)
        reg = _at_local(birth + rng.randrange(7, 60), rng.randrange(8 * HOUR_MS, 18 * HOUR_MS))
        self.at(reg, self._a_register, baby)
        self._start_streams(baby, _at_local(birth + 3, 9 * HOUR_MS))
        if self.gen.audit_patterns:
            from yibao.dev.audit_patterns import plan_birth_patterns

            plan_birth_patterns(self, baby)

    def _plan_oddities(self, reg_day: int) -> None:
        """Well-formed events that the rules reject (EventRejected), at low rates."""
        rng, n = self.rng, self.gen.households
        persons = self.persons
        ghost = _Person(self.pid(9), 9)  # never registered
        ghost.region = persons[0].region
        ghost.source = persons[0].source
        p = rng.choice(persons)
        if self.chance(P_HH_ODDITY):  # family aid across households
            other = rng.randrange(1, n + 1)
            if other != self.idx:
                self.at(self.when(reg_day + 1), self._a_aid, (p, f"P{other * 10:07d}"))
        if self.chance(P_HH_ODDITY):  # family aid by a resident, or to oneself
            self.at(self.when(reg_day + 1), self._a_aid, (p, rng.choice(persons).pid))
        if self.chance(P_HH_ODDITY / 2):  # revocation with no authorization
            self.at(self.when(reg_day + 1), self._a_revoke, (p, rng.choice(persons).pid))
        if self.chance(P_HH_ODDITY / 2):  # account credit for a resident (or anyone)
            self.at(self.when(reg_day + 1), self._a_account_credit, (p, False))
        if self.chance(P_HH_ODDITY):  # an enrollment event for an unknown person
            t = self.when(reg_day + 1)
            k = rng.randrange(3)
            if k == 0:
                self.at(t, self._a_assist, (ghost, "low_income", _month_start(local_day(t))))
            elif k == 1:
                self.at(t, self._a_enrollment, (ghost, "EnrollmentSuspended", local_day(t)))
            else:
                self.at(t, self._a_credit_line, (ghost, self._bank(), self._limit()))
        if self.chance(P_HH_ODDITY / 2):  # a disease that is in no table
            t = self.when(reg_day + 1)
            self.at(
                t, self._a_certify, (p, rng.choice(_UNKNOWN_DISEASES), local_day(t), local_day(t) + 364)
            )
        if self.chance(P_HH_ODDITY / 2):  # care for a person who is not registered
            self.at(self.when(reg_day + 1), self._a_open, (ghost, "outpatient", None))

    # -- helpers for the plan ----------------------------------------------------------------

    def _bank(self) -> str:
        return self.rng.choices(_BANKS, _BANK_W)[0]

    def _limit(self) -> int:
        return self.rng.choice((500_000, 1_000_000, 1_000_000, 2_000_000, 2_000_000, 5_000_000))

    def _away_region(self, home: str) -> str:
        cands = [r for r in _AWAY_W if r[:2] != home[:2]]
        return self.rng.choices(cands, [_AWAY_W[r] for r in cands])[0]

    def _start_streams(self, p: _Person, ms: int) -> None:
        rng = self.rng
        self._next_general(p, ms)
        if p.conditions:
            self.at(ms + rng.randrange(0, 30 * DAY_MS), self._a_chronic, p)

    def _rates(self, p: _Person, dn: int) -> tuple[float, float, float]:
        """Outpatient, emergency, inpatient visits per year."""
        age = p.age(dn)
        if age < 6:
            return 6.0, 0.5, 0.10
        if age < 18:
            return 3.0, 0.3, 0.04
        if age < 45:
            return 2.5, 0.25, 0.05
        if age < 60:
            return 4.0, 0.25, 0.12
        if age < 75:
            return 6.0, 0.35, 0.25
        return 7.0, 0.5, 0.40

    def _next_general(self, p: _Person, now: int) -> None:
        rng = self.rng
        dn = local_day(now)
        o, e, i = self._rates(p, dn)
        days = rng.expovariate((o + e + i) / 365.0)
        day = local_day(now + int(days * DAY_MS))
        r = rng.random() * (o + e + i)
        kind = "outpatient" if r < o else "emergency" if r < o + e else "inpatient"
        if kind == "emergency":
            tod = rng.randrange(DAY_MS)
        elif kind == "inpatient":
            tod = rng.randrange(7 * HOUR_MS, 21 * HOUR_MS)
        else:
            tod = rng.randrange(7 * HOUR_MS + 30 * MIN_MS, 17 * HOUR_MS + 30 * MIN_MS)
        t = _at_local(day, tod)
        if t <= now:
            t += DAY_MS
        self.at(t, self._a_general, (p, kind))

    def _alive(self, p: _Person, ms: int) -> bool:
        return p.death is None or local_day(ms) <= p.death

    # -- actions: enrollment -----------------------------------------------------------------

    def _a_register(self, ms: int, p: _Person) -> Event:
        e = self.env("PersonRegistered", ms, p.source, p.pid)
        e["household_id"] = self.hid
        e["scheme"] = p.scheme
        e["region"] = p.region
        e["birth_date"] = _date_str(p.birth)
        e["sex"] = p.sex
        e["retired"] = p.retired
        e["assistance"] = p.assistance
        e["effective_from"] = _date_str(p.eff)
        e["personal_account_fen"] = p.opening_balance
        return e

    def _a_aid(self, ms: int, arg: tuple[_Person, str]) -> Event:
        payer, bid = arg
        e = self.env("FamilyAidAuthorized", ms, payer.source, payer.pid)
        e["beneficiary_id"] = bid
        return e

    def _a_revoke(self, ms: int, arg: tuple[_Person, str]) -> Event:
        payer, bid = arg
        e = self.env("FamilyAidRevoked", ms, payer.source, payer.pid)
        e["beneficiary_id"] = bid
        return e

    def _a_certify(self, ms: int, arg: tuple[_Person, str, int, int]) -> Event:
        p, code, frm, to = arg
        e = self.env("SpecialDiseaseCertified", ms, p.source, p.pid)
        e["disease_code"] = code
        e["valid_from"] = _date_str(frm)
        e["valid_to"] = _date_str(to)
        return e

    def _a_filing(self, ms: int, arg: tuple[_Person, str, int, int]) -> Event:
        p, region, frm, to = arg
        e = self.env("CrossRegionFiled", ms, p.source, p.pid)
        e["treatment_region"] = region
        e["valid_from"] = _date_str(frm)
        e["valid_to"] = _date_str(to)
        return e

    def _a_credit_line(self, ms: int, arg: tuple[_Person, str, int]) -> Event:
        p, bank, limit = arg
        e = self.env("CreditLineGranted", ms, p.source, p.pid)
        e["bank"] = bank
        e["limit_fen"] = limit
        return e

    def _a_account_credit(self, ms: int, arg: _Person | tuple[_Person, bool]) -> Event | None:
        rng = self.rng
        if isinstance(arg, tuple):  # a one-off (maybe for a resident: rejected)
            p, periodic = arg
        else:
            p, periodic = arg, True
        if periodic:
            if not self._alive(p, ms):
                return None
            self.at(ms + rng.randrange(88, 94) * DAY_MS, self._a_account_credit, p)
        amount = rng.randrange(30000, 90000) if p.retired else rng.randrange(30000, 150000)
        e = self.env("PersonalAccountCredited", ms, p.source, p.pid)
        e["amount_fen"] = amount
        return e

    def _a_assist(self, ms: int, arg: tuple[_Person, str | None, int]) -> Event:
        p, cat, eff = arg
        e = self.env("AssistanceStatusChanged", ms, p.source, p.pid)
        e["assistance"] = cat
        e["effective_from"] = _date_str(eff)
        return e

    def _a_enrollment(self, ms: int, arg: tuple[_Person, str, int]) -> Event:
        p, typ, eff = arg
        e = self.env(typ, ms, p.source, p.pid)
        e["effective_from"] = _date_str(eff)
        return e

    def _a_death(self, ms: int, arg: tuple[_Person, int]) -> Event:
        p, day = arg
        e = self.env("PersonDeceased", ms, p.source, p.pid)
        e["date_of_death"] = _date_str(day)
        return e

    def _a_repay(self, ms: int, p: _Person) -> Event | None:
        rng = self.rng
        if rng.random() < 0.97:
            self.at(ms + rng.randrange(26, 35) * DAY_MS, self._a_repay, p)
        limits, owed = self._credit(p)
        owing = [b for b in limits if owed.get(b, 0) > 0]
        r = rng.random()
        if r < 0.01:  # to a bank that never granted a line
            bank = rng.choice([b for b in _BANKS if b not in limits])
            amount = rng.randrange(1000, 200000)
        elif not owing:
            return None
        else:
            bank = owing[0]
            out = owed[bank]
            if r < 0.03:
                amount = out + rng.randrange(100, 20000)  # more than is owed
            elif r < 0.75 or out < 100:
                amount = out
            else:
                amount = out * rng.randrange(30, 90) // 100
            if len(owing) > 1:
                self.at(ms + rng.randrange(MIN_MS, 10 * MIN_MS), self._a_repay_once, p)
        e = self.env("CreditRepaid", ms, p.source, p.pid)
        e["bank"] = bank
        e["amount_fen"] = amount
        return e

    def _a_repay_once(self, ms: int, p: _Person) -> Event | None:
        limits, owed = self._credit(p)
        owing = [b for b in limits if owed.get(b, 0) > 0]
        if not owing:
            return None
        bank = owing[-1]
        e = self.env("CreditRepaid", ms, p.source, p.pid)
        e["bank"] = bank
        e["amount_fen"] = owed[bank]
        return e

    def _credit(self, p: _Person) -> tuple[dict[str, int], dict[str, int]]:
        """``p``'s credit limits and debts by bank; limits are in the order granted, so which bank
        a repayment goes to first does not depend on the order the debts arose in."""
        held = self.held(p)
        return (held.credit_limit, held.credit_outstanding) if held is not None else ({}, {})

    # -- actions: care -----------------------------------------------------------------------

    def _a_general(self, ms: int, arg: tuple[_Person, str]) -> Event | None:
        p, kind = arg
        if not self._alive(p, ms):
            return None
        if ms < p.busy_until:
            self.at(p.busy_until + self.rng.randrange(1, 4) * DAY_MS, self._a_general, arg)
            return None
        ev = self._a_open(ms, (p, kind, None))
        self._next_general(p, max(ms, p.busy_until))
        return ev

    def _a_chronic(self, ms: int, p: _Person) -> Event | None:
        if not self._alive(p, ms):
            return None
        self.at(ms + self.rng.randrange(25, 41) * DAY_MS, self._a_chronic, p)
        if ms < p.busy_until:
            return None
        return self._a_open(ms, (p, "outpatient_chronic", None))

    def _a_special(self, ms: int, p: _Person) -> Event | None:
        if not self._alive(p, ms) or p.special is None:
            return None
        iv = _SPECIALS[p.special].interval
        nxt = ms + (iv + self.rng.randrange(-iv // 5, iv // 5 + 1)) * DAY_MS
        if local_day(nxt) <= p.special_until + 45:  # stops a while after a lapse
            self.at(nxt, self._a_special, p)
        if ms < p.busy_until:
            return None
        return self._a_open(ms, (p, "outpatient_special", None))

    def _facility(self, p: _Person, kind: str, level3: float, dn: int) -> _Facility:
        rng = self.rng
        region = p.region
        f = p.filing
        r = rng.random()
        if f is not None and f[1] <= dn <= f[2] + 30 and r < 0.8:
            region = f[0]
        elif r > 0.93 and kind != "outpatient_chronic":
            region = self._away_region(p.region)
        elif r > 0.7:
            region = rng.choice(_PROVINCE[p.region[:2]])
        if kind == "inpatient" or kind == "outpatient_special":
            level = 3 if rng.random() < level3 else 2 if rng.random() < 0.8 else 1
        elif kind == "outpatient_chronic":
            level = 1 if rng.random() < 0.55 else 2 if rng.random() < 0.7 else 3
        elif kind == "emergency":
            level = 3 if rng.random() < 0.5 else 2
        else:
            level = 1 if rng.random() < 0.45 else 2 if rng.random() < 0.55 else 3
        fs = _FACILITIES[region][level - 1] or _FACILITIES[region][1]
        return rng.choice(fs)

    def _a_open(self, ms: int, arg: OpenArg) -> Event:
        """VisitOpened; plans the visit's charges and its checkout (as an audit pattern steers
        it, if it does)."""
        p, kind, dx, *rest = arg
        steer = rest[0] if rest else None
        rng = self.rng
        dn = local_day(ms)
        self.nvisit += 1
        vid = f"V{self.idx:06d}-{self.nvisit}"
        special = None
        days = 0
        if kind == "inpatient":
            if dx is None:
                age = p.age(dn)
                w = [
                    d.weight * (0.3 if age < 18 and d.surgery in ("pci", "hip", "cataract") else 1.0)
                    for d in _INPATIENT_DX
                ]
                dx = rng.choices(_INPATIENT_DX, w)[0]
            days = max(1, min(60, round(dx.days * math.exp(rng.gauss(0.0, 0.45)))))
            diagnoses = [rng.choice(dx.codes)]
            if rng.random() < 0.4:
                extra = rng.choice(_DX_OUTPATIENT)
                if extra not in diagnoses:
                    diagnoses.append(extra)
            fac = self._facility(p, kind, dx.level3, dn)
            total = _lognormal_fen(rng, dx.median_yuan, dx.sigma, 5000, 300000)
        elif kind == "outpatient_special":
            special = p.special or rng.choice(_SPECIAL_CODES)
            sp = _SPECIALS[special]
            diagnoses = [rng.choice(sp.codes)]
            fac = self._facility(p, kind, 0.6, dn)
            total = _lognormal_fen(rng, sp.median_yuan, 0.4, 100, 100000)
        elif kind == "outpatient_chronic":
            conds = p.conditions or ["hypertension"]
            diagnoses = [
                ("I10" if c == "hypertension" else rng.choice(("E11.9", "E11.9", "E14.9"))) for c in conds
            ]
            if rng.random() < 0.2:
                extra = rng.choice(_DX_OUTPATIENT)
                if extra not in diagnoses:
                    diagnoses.insert(rng.randrange(2), extra)
            if rng.random() < 0.1:
                diagnoses = [rng.choice(("I11.9", "I15.0", "E10.9", "E13.9"))]
            fac = self._facility(p, kind, 0.0, dn)
            total = _lognormal_fen(rng, 220, 0.5, 50, 1500)
        elif kind == "emergency":
            diagnoses = [rng.choice(_DX_EMERGENCY)]
            fac = self._facility(p, kind, 0.0, dn)
            total = _lognormal_fen(rng, 500, 0.8, 100, 5000)
        else:
            r = rng.random()
            diagnoses = [] if r < 0.05 else [rng.choice(_DX_OUTPATIENT)]
            if r > 0.85:
                extra = rng.choice((*_DX_OUTPATIENT, "I10", "E11.9"))
                if extra not in diagnoses:
                    diagnoses.append(extra)
            fac = self._facility(p, kind, 0.0, dn)
            total = _lognormal_fen(rng, 150, 0.75, 50, 2000)
        if steer is not None:
            fac = steer.fac
            diagnoses = list(steer.diagnoses) if steer.diagnoses is not None else diagnoses
            days = steer.days or days
        v = _Visit(vid, p, fac, kind, dn, diagnoses, special)
        e = self.env("VisitOpened", ms, fac.source, p.pid)
        e["visit_id"] = vid
        e["facility_id"] = fac.fid
        e["facility_level"] = fac.level
        e["facility_region"] = fac.region
        e["kind"] = kind
        e["opened_at"] = _ts(ms, rng.random() < 0.25, millis=False)
        e["diagnoses"] = diagnoses
        if special is not None or rng.random() >= P_OMIT_NULL:
            e["special_disease_code"] = special
        self._plan_visit(v, ms, dx, days, total, steer.extra if steer is not None else ())
        return e

    def _plan_visit(
        self, v: _Visit, ms: int, dx: _InpatientDx | None, days: int, total: int, extra: tuple[Line, ...] = ()
    ) -> None:
        """The visit's charges (``extra``: a pattern's lines, charged once), checkout, and so on."""
        rng = self.rng
        p = v.person
        if v.kind == "inpatient":
            assert dx is not None
            batches = self._inpatient_lines(v, dx, days, total)
            close = _at_local(v.open_day + days, rng.randrange(9 * HOUR_MS, 16 * HOUR_MS))
            close = max(close, ms + 2 * HOUR_MS)
            step = max(MIN_MS, (close - ms - HOUR_MS) // max(1, len(batches)))
            t = ms + rng.randrange(10 * MIN_MS, 60 * MIN_MS)
            if extra:
                self.at(t + MIN_MS, self._a_charge, (v, False, list(extra)))
            if rng.random() < 0.12:  # a deposit before settlement: NOT_SETTLED
                amount = rng.choice((100_000, 200_000, 300_000, 500_000, 1_000_000))
                self.at(ms + rng.randrange(MIN_MS, 30 * MIN_MS), self._a_pay, (v, "deposit", amount))
            for is_rx, lines in batches:
                self.at(t, self._a_charge, (v, is_rx, lines))
                t = min(t + step, close - 30 * MIN_MS)
            p.busy_until = close + DAY_MS
        else:
            batches = self._outpatient_lines(v, total)
            t = ms + rng.randrange(2 * MIN_MS, 15 * MIN_MS)
            for is_rx, lines in batches:
                self.at(t, self._a_charge, (v, is_rx, lines))
                t += rng.randrange(MIN_MS, 25 * MIN_MS)
            if extra:
                self.at(t, self._a_charge, (v, False, list(extra)))
                t += MIN_MS
            span = 3 * HOUR_MS if v.kind == "emergency" else 4 * HOUR_MS if v.special else 0
            close = t + rng.randrange(3 * MIN_MS, 30 * MIN_MS) + rng.randrange(span + 1)
            if rng.random() < 0.005:  # paying before the checkout: NOT_SETTLED
                self.at(close - MIN_MS, self._a_pay, (v, "deposit", max(100, total // 2)))
        if rng.random() < P_REVERSAL:
            self.at(close - rng.randrange(MIN_MS, 10 * MIN_MS), self._a_reverse, (v, None))
        odd = rng.random()
        po = P_VISIT_ODDITY
        if odd < po:  # the same visit opened twice
            self.at(ms + rng.randrange(MIN_MS, 10 * MIN_MS), self._a_reopen, v)
        elif odd < 2 * po:  # charges for a visit that was never opened
            lines = self._outpatient_lines(v, 3000)[0][1]
            self.at(ms + MIN_MS, self._a_charge, (self._phantom(v), False, lines))
        elif odd < 3 * po:  # a reversal of a line the visit does not have
            self.at(close - MIN_MS // 2, self._a_reverse, (v, [f"{v.vid}-99-0"]))
        elif odd < 4 * po:  # a checkout of a visit that was never opened
            self.at(close + 1000, self._a_close, (self._phantom(v), True, False))
        elif odd < 5 * po:  # a refund of a visit that is not settled
            self.at(close - 2 * MIN_MS, self._a_refund, (v, False))
        elif odd < 7 * po:  # charges after checkout: VISIT_ALREADY_SETTLED
            lines = self._outpatient_lines(v, 2000)[-1][1]
            self.at(close + rng.randrange(HOUR_MS, 48 * HOUR_MS), self._a_charge, (v, False, lines))
        elif odd < 9 * po:  # a second checkout: VISIT_ALREADY_SETTLED
            self.at(close + rng.randrange(1000, 60000), self._a_close, (v, True, False))
        elif odd < 10 * po:  # a line id sent twice: DUPLICATE_LINE
            self.at(close - MIN_MS, self._a_charge, (v, False, "dup"))
        self.at(close, self._a_close, (v, rng.random() >= P_NO_ACCOUNT, True))

    def _phantom(self, v: _Visit) -> _Visit:
        return _Visit(f"V{self.idx:06d}-0", v.person, v.fac, v.kind, v.open_day, [], None)

    # -- line items --------------------------------------------------------------------------

    def _line(self, item: _Item, level: int, qty: int) -> Line:
        qty = max(1, qty)
        cap = item.cap_unit * qty if item.cap_unit is not None else None
        return (item, qty, item.prices[level - 1], cap)

    def _fill(self, pool: list[_Item], level: int, budget: int, n: int, max_qty: int) -> list[Line]:
        """``n`` lines from ``pool`` whose amounts add up to about ``budget``."""
        rng = self.rng
        out = []
        for k in range(n):
            share = budget // (n - k)
            # of three candidates, the one whose price suits the share (about 3 units)
            item = min(
                rng.sample(pool, min(3, len(pool))), key=lambda it: abs(it.prices[level - 1] * 3 - share)
            )
            unit = item.prices[level - 1]
            qty = min(max_qty, max(1, round(share / unit))) if unit else 1
            out.append(self._line(item, level, qty))
            budget -= qty * unit
            if budget <= 0:
                break
        return out

    def _outpatient_lines(self, v: _Visit, total: int) -> list[tuple[bool, list[Line]]]:
        rng, lvl = self.rng, v.level
        kind = v.kind
        consult = (
            _S_CONSULT[2]
            if kind == "emergency"
            else _S_CONSULT[0]
            if lvl == 1
            else (_S_CONSULT[1] if rng.random() < 0.3 else _S_CONSULT[0])
        )
        if kind == "outpatient" and lvl == 3 and rng.random() < 0.02:
            consult = _S_CONSULT[3]
        first = [self._line(consult, lvl, 1)]
        services: list[Line] = []
        budget = total - first[0][2]
        if kind == "emergency" or rng.random() < 0.4:
            for item in rng.sample(_S_LAB, rng.randrange(1, 4)):
                if item.prices[lvl - 1] < budget * 0.6:
                    services.append(self._line(item, lvl, 1))
                    budget -= item.prices[lvl - 1]
            if rng.random() < (0.5 if kind == "emergency" else 0.15):
                item = rng.choice(_S_IMG)
                if item.prices[lvl - 1] < budget:
                    services.append(self._line(item, lvl, 1))
                    budget -= item.prices[lvl - 1]
        if kind == "outpatient_special":
            assert v.special is not None
            sp = _SPECIALS[v.special]
            if sp.drugs == "dialysis":
                sessions = rng.randrange(2, 5)
                services.append(self._line(_S_SPECIAL["dialysis"][0], lvl, sessions))
                services.append(self._line(_C_IMPLANT["dialysis"][0], lvl, sessions))
                budget -= sessions * (
                    _S_SPECIAL["dialysis"][0].prices[lvl - 1] + _C_IMPLANT["dialysis"][0].prices[lvl - 1]
                )
            elif sp.drugs == "cancer":
                services.append(self._line(_S_SPECIAL["cancer"][0], lvl, rng.randrange(1, 3)))
            pool = _D_BIG[sp.drugs]
        elif kind == "outpatient_chronic":
            pool = []
            for c in v.person.conditions or ["hypertension"]:
                pool += _D_HTN if c == "hypertension" else _D_DM
        else:
            pool = _D_OP
        max_qty = 12 if kind in ("outpatient", "emergency") else 30
        drugs = self._fill(pool, lvl, budget, rng.randrange(1, 4), max_qty) if budget > 300 else []
        if kind == "outpatient" and rng.random() < 0.05:
            services.append(self._line(_S_SPECIAL["acupuncture"][0], lvl, rng.randrange(1, 6)))
        if rng.random() < 0.15:
            services.append(self._line(rng.choice(_C_BASIC), lvl, rng.randrange(1, 4)))
        batches: list[tuple[bool, list[Line]]] = []
        if services and rng.random() < 0.5:
            batches.append((False, first + services))
        else:
            batches.append((False, first))
            if services:
                batches.append((False, services))
        if drugs:
            if len(drugs) > 1 and rng.random() < 0.15:  # two prescriptions
                batches.append((True, drugs[:1]))
                batches.append((True, drugs[1:]))
            else:
                batches.append((True, drugs))
        return batches

    def _inpatient_lines(
        self, v: _Visit, dx: _InpatientDx, days: int, total: int
    ) -> list[tuple[bool, list[Line]]]:
        rng, lvl = self.rng, v.level
        nb = min(5, 1 + days // 3)
        batches: list[list[Line]] = [[] for _ in range(nb)]
        # daily charges, billed per period
        bounds = sorted(rng.sample(range(1, days), nb - 1)) if days > nb else []
        periods = [b - a for a, b in zip([0, *bounds], [*bounds, days], strict=True)]
        periods += [0] * (nb - len(periods))
        icu = dx.surgery in ("cancer", "pci", "hip") and rng.random() < 0.3
        bed = _S_WARD[5] if rng.random() < 0.02 else self.gen.ward_bed
        spent = 0
        for k, n in enumerate(periods):
            if n <= 0:
                continue
            for item in (bed, _S_WARD[1], _S_WARD[2], _S_WARD[3]):
                ln = self._line(item, lvl, n)
                batches[k].append(ln)
                spent += ln[1] * ln[2]
            ln = self._line(_C_BASIC[0], lvl, n * rng.randrange(1, 3))
            batches[k].append(ln)
            spent += ln[1] * ln[2]
        for item in rng.sample(_S_LAB, rng.randrange(3, 7)):
            ln = self._line(item, lvl, rng.randrange(1, 1 + max(1, days // 4)))
            batches[0].append(ln)
            spent += ln[1] * ln[2]
        for item in rng.sample(_S_IMG, rng.randrange(0, 3)):
            ln = self._line(item, lvl, 1)
            batches[0].append(ln)
            spent += ln[1] * ln[2]
        k_surg = min(nb - 1, 1) if nb > 1 else 0
        if dx.surgery is not None:
            surgery = self.gen.delivery if dx.surgery == "delivery" else _S_SURGERY[dx.surgery][0]
            surg = [self._line(surgery, lvl, 1)]
            if dx.surgery not in ("delivery",):
                surg.append(self._line(_S_ANESTHESIA[0], lvl, 1))
            implant = _C_IMPLANT.get(dx.surgery)
            if implant:
                n = rng.randrange(1, 3) if dx.surgery == "pci" else 1
                surg.append(self._line(implant[0], lvl, n))
            batches[k_surg] += surg
            spent += sum(ln[1] * ln[2] for ln in surg)
        if icu:
            ln = self._line(_S_WARD[4], lvl, rng.randrange(1, 1 + min(7, days)))
            batches[k_surg].append(ln)
            spent += ln[1] * ln[2]
        budget = total - spent
        pool = _D_WARD + (_D_BIG["cancer"] if dx.surgery == "cancer" else [])
        ward = self._fill(pool, lvl, budget * 8 // 10, rng.randrange(2, 7), 600) if budget > 0 else []
        for ln in ward:
            batches[rng.randrange(nb)].append(ln)
            budget -= ln[1] * ln[2]
        if budget > 100_000:  # the rest: expensive drugs or consumables
            big = _D_BIG["cancer"] if dx.surgery == "cancer" else [_D_WARD[8], *_C_BASIC[2:4]]
            for ln in self._fill(big, lvl, budget, rng.randrange(1, 3), 200):
                batches[rng.randrange(nb)].append(ln)
        out: list[tuple[bool, list[Line]]] = [(False, b) for b in batches if b]
        rx = self._fill(_D_OP[:10] + _D_HTN[:3], lvl, rng.randrange(2000, 30000), rng.randrange(1, 4), 30)
        if rng.random() < 0.7:
            out.append((True, rx))  # discharge prescription
        return out

    # -- actions: a visit's events ------------------------------------------------------------

    def _items(self, v: _Visit, lines: list[Line]) -> list[Event]:
        k = v.nbatch
        v.nbatch += 1
        out = []
        omit = self.rng.random() < P_OMIT_NULL
        for i, (item, qty, unit, cap) in enumerate(lines):
            d: Event = {
                "line_id": f"{v.vid}-{k}-{i}",
                "code": item.code,
                "name": item.name,
                "category": item.category,
                "catalog_class": item.cls,
                "quantity": qty,
                "unit_price_fen": unit,
                "amount_fen": qty * unit,
            }
            if cap is not None or not omit:
                d["cap_fen"] = cap
            out.append(d)
        return out

    def _a_charge(self, ms: int, arg: tuple[_Visit, bool, list[Line] | str]) -> Event:
        v, is_rx, lines = arg
        p = v.person
        if lines == "dup":  # reuse an id already on the visit
            lines = self._outpatient_lines(v, 2000)[-1][1]
            items = self._items(v, lines)
            visit = self.held_visit(v)
            if visit is not None and visit.lines:
                items[0]["line_id"] = next(iter(visit.lines))
            else:
                items.append(dict(items[0]))
        else:
            assert not isinstance(lines, str)
            items = self._items(v, lines)
            if is_rx and any(item[0].category != "drug" for item in lines):
                is_rx = False
        src = v.fac.source
        if is_rx:
            e = self.env("PrescriptionIssued", ms, src, p.pid)
            e["visit_id"] = v.vid
            e["prescription_id"] = f"RX-{v.vid}-{v.nbatch - 1}"
        else:
            e = self.env("ItemsCharged", ms, src, p.pid)
            e["visit_id"] = v.vid
        e["items"] = items
        return e

    def _a_reverse(self, ms: int, arg: tuple[_Visit, list[str] | None]) -> Event | None:
        v, ids = arg
        rng = self.rng
        if ids is None:
            visit = self.held_visit(v)
            if visit is None or not visit.lines or visit.current is not None:
                return None
            lines = list(visit.lines)
            ids = rng.sample(lines, min(len(lines), 1 if rng.random() < 0.8 else 2))
        e = self.env("ChargeReversed", ms, v.fac.source, v.person.pid)
        e["visit_id"] = v.vid
        e["line_ids"] = ids
        return e

    def _a_reopen(self, ms: int, v: _Visit) -> Event:
        e = self.env("VisitOpened", ms, v.fac.source, v.person.pid)
        e["visit_id"] = v.vid
        e["facility_id"] = v.fac.fid
        e["facility_level"] = v.fac.level
        e["facility_region"] = v.fac.region
        e["kind"] = v.kind
        e["opened_at"] = _ts(ms, False, millis=False)
        e["diagnoses"] = v.diagnoses
        e["special_disease_code"] = v.special
        return e

    def _a_close(self, ms: int, arg: tuple[_Visit, bool, bool]) -> Event:
        v, use_pa, primary = arg
        rng = self.rng
        p = v.person
        e = self.env("VisitClosed", ms, v.fac.source, p.pid)
        e["visit_id"] = v.vid
        e["closed_at"] = _ts(ms, rng.random() < 0.25, millis=False)
        if not use_pa or rng.random() >= P_OMIT_NULL:
            e["use_personal_account"] = use_pa
        # Folded now, not after the action: the payments are sized from this settlement.
        outputs = self.fold(e)
        settled = next((o for o in outputs if isinstance(o, ClaimSettled)), None)
        if not primary:
            return e
        t = ms + rng.randrange(20_000, 5 * MIN_MS)
        if settled is None and any(
            isinstance(o, ClaimRejected) and o.reason == "AUDIT_BLOCK" for o in outputs
        ):
            self._correct_audit_block(v, outputs, t, use_pa)
            return e
        if settled is None:
            if rng.random() < 0.25:  # the patient pays the full bill anyway: NOT_SETTLED
                visit = self.held_visit(v)
                total = sum(a for _c, a, _cap in visit.lines.values()) if visit is not None else 0
                if total > 0:
                    self.at(t, self._a_pay, (v, "deposit", total))
            if rng.random() < 0.02:
                self.at(t + HOUR_MS, self._a_refund, (v, False))
            return e
        self._plan_payments(v, settled.amounts.cash_due, t)
        if rng.random() < P_REFUND:
            t2 = t + rng.randrange(10 * MIN_MS, 3 * DAY_MS)
            self.at(t2, self._a_refund, (v, True))
        return e

    def _correct_audit_block(self, v: _Visit, outputs: list[OutputEvent], t: int, use_pa: bool) -> None:
        """The platform hands a blocked bill back at once: the hospital mostly reverses the
        flagged lines and checks out again (else the visit stays open)."""
        rng = self.rng
        if rng.random() >= 0.9:
            return
        flagged = (lid for o in outputs if isinstance(o, AuditFlagRaised) for lid in o.line_ids)
        self.at(t, self._a_reverse, (v, list(dict.fromkeys(flagged))))
        self.at(t + rng.randrange(MIN_MS, 10 * MIN_MS), self._a_close, (v, use_pa, True))

    def _plan_payments(self, v: _Visit, cash: int, t: int) -> None:
        rng = self.rng
        limits, _owed = self._credit(v.person)
        r = rng.random()
        plan: list[tuple[str, Any]]
        if cash <= 0:
            if r < 0.01:
                plan = [("over", self._method())]
            else:
                return
        elif limits and (cash >= 50_000 or v.kind == "inpatient") and r < 0.6:
            bank = rng.choice(list(limits))
            plan = [("credit", bank), ("full", self._method())]
            if rng.random() < 0.2:
                plan.insert(0, ("credit_all", bank))  # may exceed the limit
        elif r < 0.004:
            plan = [
                ("credit_all", rng.choice([b for b in _BANKS if b not in limits])),
                ("full", self._method()),
            ]
        elif r < 0.02:
            plan = [("over", self._method()), ("full", self._method())]
        elif r < 0.11:
            plan = [("part", self._method()), ("full", self._method())]
        elif r < 0.125:
            plan = [("part", self._method())]  # leaves something outstanding
        elif r < 0.13:
            plan = [("full", self._method()), ("over", self._method())]  # paid twice
        else:
            plan = [("full", self._method())]
        self.at(t, self._a_pay, (v, plan, None))

    def _method(self) -> str:
        return self.rng.choices(_METHODS, _METHOD_W)[0]

    def _a_pay(self, ms: int, arg: tuple[_Visit, Any, Any]) -> Event | None:
        v, plan, extra = arg
        rng = self.rng
        p = v.person
        visit = self.held_visit(v)
        s = visit.current if visit is not None else None
        outstanding = s.outstanding if s is not None else 0
        bank = None
        if plan == "deposit":
            method, amount = self._method(), int(extra)
        else:
            mode, what = plan[0]
            if len(plan) > 1:
                self.at(ms + rng.randrange(20_000, 3 * MIN_MS), self._a_pay, (v, plan[1:], None))
            method = what
            if mode == "full":
                amount = outstanding
            elif mode == "part":
                amount = outstanding * rng.randrange(20, 80) // 100
            elif mode == "over":
                amount = outstanding + rng.randrange(100, max(200, outstanding // 5 + 1))
            else:
                method, bank = "credit", what
                limits, owed = self._credit(p)
                avail = limits.get(bank, 0) - owed.get(bank, 0)
                if mode == "credit_all":
                    amount = outstanding if outstanding > avail or bank not in limits else 0
                else:
                    amount = min(outstanding, avail)
        if amount <= 0:
            return None
        v.npay += 1
        e = self.env("PaymentMade", ms, v.fac.source, p.pid)
        e["visit_id"] = v.vid
        e["payment_id"] = f"PAY-{v.vid}-{v.npay}"
        e["method"] = method
        e["amount_fen"] = amount
        if bank is not None or rng.random() >= P_OMIT_NULL:
            e["bank"] = bank
        return e

    def _a_refund(self, ms: int, arg: tuple[_Visit, bool]) -> Event:
        v, follow = arg
        rng = self.rng
        p = v.person
        e = self.env("VisitRefunded", ms, v.fac.source, p.pid)
        e["visit_id"] = v.vid
        e["reason"] = rng.choice(_REFUND_REASONS)
        if follow and rng.random() < 0.92:  # corrected and checked out again
            t = ms + rng.randrange(2 * MIN_MS, 20 * MIN_MS)
            if rng.random() < 0.6:
                self.at(t, self._a_reverse, (v, None))
                t += rng.randrange(MIN_MS, 10 * MIN_MS)
            if rng.random() < 0.3:
                self.at(t, self._a_charge, (v, False, self._outpatient_lines(v, 3000)[-1][1]))
                t += rng.randrange(MIN_MS, 10 * MIN_MS)
            self.at(
                t + rng.randrange(MIN_MS, 30 * MIN_MS), self._a_close, (v, rng.random() >= P_NO_ACCOUNT, True)
            )
        return e


# --------------------------------------------------------------------------- bad lines

_NULLABLE = frozenset({"assistance", "special_disease_code", "bank", "use_personal_account"})
_ID_FIELDS = (
    "event_id",
    "person_id",
    "source",
    "visit_id",
    "payment_id",
    "household_id",
    "facility_id",
    "prescription_id",
    "beneficiary_id",
    "bank",
)
_REGION_FIELDS = ("region", "facility_region", "treatment_region")
_DATE_FIELDS = ("birth_date", "effective_from", "valid_from", "valid_to", "date_of_death")
_ENUMS = {
    "scheme": "commercial",
    "sex": "U",
    "kind": "dental",
    "method": "alipay",
    "assistance": "poor",
    "facility_level": 4,
}
_POSITIVE = ("amount_fen", "limit_fen")

# kind -> weight; applicability is checked per event
_BAD_KINDS = {
    "invalid_json": 12,
    "truncated": 10,
    "unknown_type": 6,
    "unknown_field": 8,
    "missing_field": 10,
    "wrong_type": 10,
    "bad_id": 7,
    "bad_timestamp": 6,
    "bad_enum": 6,
    "bad_region": 5,
    "amount_mismatch": 8,
    "negative_amount": 6,
    "resident_retired": 4,
    "resident_account": 2,
    "special_without_code": 4,
    "code_on_other_kind": 2,
    "credit_without_bank": 4,
}
_BAD_LIST = list(_BAD_KINDS)
_BAD_W = list(_BAD_KINDS.values())


def _applicable(kind: str, ev: Event) -> bool:
    t = ev["type"]
    if kind == "bad_region":
        return any(f in ev for f in _REGION_FIELDS)
    if kind == "amount_mismatch":
        return bool(ev.get("items"))
    if kind == "negative_amount":
        return any(f in ev for f in _POSITIVE) or bool(ev.get("items"))
    if kind == "bad_enum":
        return any(f in ev for f in _ENUMS)
    if kind in ("resident_retired", "resident_account"):
        return t == "PersonRegistered" and ev["scheme"] == "resident"
    if kind == "special_without_code":
        return t == "VisitOpened" and ev["kind"] == "outpatient_special"
    if kind == "code_on_other_kind":
        return t == "VisitOpened" and ev["kind"] != "outpatient_special"
    if kind == "credit_without_bank":
        return t == "PaymentMade" and ev["method"] == "credit"
    return True


def _corrupt(kind: str, ev: Event, rng: random.Random, enc: msgspec.json.Encoder) -> bytes:
    """A malformed line made from a good event (already carrying its event_id)."""
    d = dict(ev)
    if "items" in d:
        d["items"] = [dict(i) for i in d["items"]]
    if kind == "invalid_json":
        raw = enc.encode(d)
        variant = rng.randrange(5)
        if variant == 0:
            return raw.replace(b'":', b'" ', 1)  # a missing colon
        if variant == 1:
            return raw[:-1] + b",}"  # a trailing comma
        if variant == 2:
            return raw + b"}"  # extra data
        if variant == 3:
            return raw.replace(b'"', b"'")  # Python-style quotes
        return b"[" + raw + b"]"  # not an object
    if kind == "truncated":
        raw = enc.encode(d)
        cut = rng.randrange(10, len(raw) - 1)
        while raw[cut] & 0xC0 == 0x80:  # keep the line valid UTF-8
            cut -= 1
        return raw[:cut]
    if kind == "unknown_type":
        d["type"] = rng.choice(
            (
                "VisitUpdated",
                "PersonMoved",
                "visitopened",
                "ClaimSettled",
                "PaymentReversed",
                ev["type"] + "V2",
            )
        )
    elif kind == "unknown_field":
        target = rng.choice(d["items"]) if d.get("items") and rng.random() < 0.3 else d
        target[rng.choice(("remark", "visitId", "operator", "amount_yuan", "note", "ext"))] = rng.choice(
            ("", "x", 1, None)
        )
    elif kind == "missing_field":
        if d.get("items") and rng.random() < 0.3:
            item = rng.choice(d["items"])
            del item[rng.choice([k for k in item if k != "cap_fen"])]
        else:
            del d[rng.choice([k for k in d if k not in _NULLABLE])]
    elif kind == "wrong_type":
        k = rng.choice([k for k in d if d[k] is not None])
        val = d[k]
        if isinstance(val, bool):
            d[k] = "true" if val else "false"
        elif isinstance(val, int):
            d[k] = str(val) if rng.random() < 0.6 else val + 0.5
        elif isinstance(val, str):
            d[k] = rng.choice((12345, True, [val]))
        elif isinstance(val, list):
            d[k] = val[0] if val else ""
        else:
            d[k] = "?"
    elif kind == "bad_id":
        k = rng.choice([k for k in _ID_FIELDS if isinstance(d.get(k), str)])
        d[k] = rng.choice((d[k] + " 1", d[k] + "/x", "患者" + d[k], "", "X" * 65, d[k] + "#"))
    elif kind == "bad_timestamp":
        dates = [k for k in _DATE_FIELDS if k in d]
        if dates and rng.random() < 0.4:
            k = rng.choice(dates)
            y, m, day = d[k].split("-")
            d[k] = rng.choice((f"{y}-13-{day}", f"{y}{m}{day}", f"{y}/{m}/{day}", f"{y}-02-30"))
        else:
            ts = d["occurred_at"]
            d["occurred_at"] = rng.choice(
                (ts[:-6], ts.replace("T", " ")[:19] + "Z?", ts[:5] + "13" + ts[7:], "yesterday")
            )
    elif kind == "bad_enum":
        k = rng.choice([k for k in _ENUMS if k in d])
        d[k] = _ENUMS[k]
    elif kind == "bad_region":
        k = rng.choice([k for k in _REGION_FIELDS if k in d])
        d[k] = rng.choice((d[k][:4], d[k][:5] + "A", d[k] + "0", "CQ0001"))
    elif kind == "amount_mismatch":
        item = rng.choice(d["items"])
        item["amount_fen"] = item["amount_fen"] + rng.choice((1, 100, item["unit_price_fen"] + 1))
    elif kind == "negative_amount":
        keys = [k for k in _POSITIVE if k in d]
        if keys:
            k = rng.choice(keys)
            d[k] = -d[k] if rng.random() < 0.7 else 0
        else:
            item = rng.choice(d["items"])
            if rng.random() < 0.5:
                item["quantity"] = rng.choice((0, -1))
            else:
                item["unit_price_fen"] = -item["unit_price_fen"] - 1
            item["amount_fen"] = item["quantity"] * item["unit_price_fen"]
    elif kind == "resident_retired":
        d["retired"] = True
    elif kind == "resident_account":
        d["personal_account_fen"] = rng.randrange(100, 100000)
    elif kind == "special_without_code":
        if rng.random() < 0.5:
            d["special_disease_code"] = None
        else:
            d.pop("special_disease_code", None)
    elif kind == "code_on_other_kind":
        d["special_disease_code"] = rng.choice(_SPECIAL_CODES)
    elif kind == "credit_without_bank":
        if rng.random() < 0.5:
            d["bank"] = None
        else:
            d.pop("bank", None)
    return enc.encode(d)


# ------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class GenerateConfig:
    households: int = 100
    seed: int = 1
    start: date = date(2025, 1, 1)
    end: date = date(2025, 12, 31)  # inclusive
    bad_rate: float = 0.001
    dup_rate: float = P_DUP_LINE
    audit_patterns: bool = True  # yibao/dev/audit_patterns.py; off: the log as before them


@dataclass
class GenerateStats:
    lines: int = 0
    events: int = 0  # good, distinct events
    duplicates: int = 0  # exact repeats of a good line
    malformed: int = 0
    persons: int = 0
    seconds: float = 0.0
    types: Counter[str] = field(default_factory=Counter)
    bad_kinds: Counter[str] = field(default_factory=Counter)
    bad_lines: list[int] = field(default_factory=list)  # 0-based line numbers
    duplicate_lines: list[int] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.lines / self.seconds if self.seconds else 0.0
        return (
            f"{self.lines} lines: {self.events} events, {self.duplicates} duplicates, "
            f"{self.malformed} malformed; {self.persons} persons; "
            f"{self.seconds:.1f} s ({rate:,.0f} lines/s)"
        )


class _Generator:
    def __init__(self, cfg: GenerateConfig) -> None:
        if cfg.households < 1:
            raise ValueError("households must be >= 1")
        if cfg.end < cfg.start:
            raise ValueError("the end date is before the start date")
        if not 0.0 <= cfg.bad_rate < 1.0:
            raise ValueError("bad_rate must be in [0, 1)")
        self.seed = cfg.seed
        self.households = cfg.households
        self.start_day = _day(cfg.start)
        self.end_day = _day(cfg.end) + 1  # exclusive
        self.days = self.end_day - self.start_day
        self.start_ms = _at_local(self.start_day, 0)
        self.end_ms = _at_local(self.end_day, 0)
        policy = load_policy()
        self.engine = Engine(policy)
        self.decode = Codec().decode
        self.encode = msgspec.json.Encoder().encode
        covered = policy.versions[max(0, policy.version_index(cfg.start))].special_diseases
        self.covered = frozenset(covered)
        self.covered_codes = [c for c in _SPECIAL_CODES if c in covered]
        self.covered_w = [w for c, w in zip(_SPECIAL_CODES, _SPECIAL_W, strict=True) if c in covered]
        self.audit_patterns = cfg.audit_patterns
        # With the patterns, bed-days and deliveries carry the audit catalog's codes.
        self.ward_bed = AUDITED["SVC-BED-WARD"] if cfg.audit_patterns else _S_WARD[0]
        self.delivery = AUDITED["SVC-DELIVERY"] if cfg.audit_patterns else _S_SURGERY["delivery"][0]


def generate(cfg: GenerateConfig, out: IO[bytes]) -> GenerateStats:
    """Write the log for ``cfg`` to ``out`` (binary); return what was written."""
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of long-lived objects and no garbage cycles: GC only costs time
    try:
        return _generate(cfg, out)
    finally:
        if gc_was_enabled:
            gc.enable()


def _generate(cfg: GenerateConfig, out: IO[bytes]) -> GenerateStats:
    t0 = time.perf_counter()
    gen = _Generator(cfg)
    households = [_Household(gen, i) for i in range(1, cfg.households + 1)]
    if cfg.audit_patterns:
        from yibao.dev.audit_patterns import plan_facility_patterns

        plan_facility_patterns(gen, households)
    stats = GenerateStats(persons=sum(len(h.persons) for h in households))
    rng = random.Random(f"yibao-generate:{cfg.seed}:writer")
    rnd = rng.random
    enc = msgspec.json.Encoder()
    q = cfg.bad_rate / (1.0 - cfg.bad_rate)  # extra lines per good line
    dup = cfg.dup_rate
    pending: list[str] = []
    types = stats.types
    buf = bytearray()
    n = 0  # event ids
    line = 0
    ndup = nbad = 0
    write = out.write
    for _ms, _h, _seq, ev in heapq.merge(*(h.run() for h in households)):
        n += 1
        ev["event_id"] = f"E{n:08d}"
        start = len(buf)
        enc.encode_into(ev, buf, start)
        buf += b"\n"
        types[ev["type"]] += 1
        line += 1
        if rnd() < dup:
            buf += buf[start:]
            stats.duplicate_lines.append(line)
            line += 1
            ndup += 1
        if rnd() < q:
            pending.append(rng.choices(_BAD_LIST, _BAD_W)[0])
        if pending:
            for i, kind in enumerate(pending):
                if _applicable(kind, ev):
                    del pending[i]
                    n += 1
                    bad = dict(ev)
                    bad["event_id"] = f"E{n:08d}"
                    buf += _corrupt(kind, bad, rng, enc)
                    buf += b"\n"
                    stats.bad_kinds[kind] += 1
                    stats.bad_lines.append(line)
                    line += 1
                    nbad += 1
                    break
        if len(buf) > 1 << 20:
            write(buf)
            buf = bytearray()
    write(buf)
    for h in households:  # break the household <-> scheduled action cycles: freed by refcount, no GC pass
        h.close()
    stats.lines = line
    stats.duplicates = ndup
    stats.malformed = nbad
    stats.events = line - ndup - nbad
    stats.seconds = time.perf_counter() - t0
    return stats


def generate_to_path(cfg: GenerateConfig, path: str) -> GenerateStats:
    """Write to ``path`` (``-`` = stdout)."""
    if path == "-":
        try:
            stats = generate(cfg, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        except BrokenPipeError:  # `yibao generate | head`: the reader has had enough
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(0) from None
        return stats
    with open(path, "wb") as f:
        return generate(cfg, f)
