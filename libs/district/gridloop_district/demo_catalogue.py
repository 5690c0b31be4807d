"""The demo district's departments and category catalogue.

Modelled on 蔄山镇's service list (000: 3 classes 现场办/跑腿办/网上办, 7 sub-classes, 54 items),
filled with the problems the seeds report. Item codes read <sub-class>-<class no><item no>.
"""

from __future__ import annotations

from typing import Any

# (code, name, English name, competence)
DEPARTMENTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("DEP-URBAN", "城市管理局", "Urban Management Bureau", ("CM",)),
    ("DEP-CIVIL", "民政局", "Civil Affairs Bureau", ("WF",)),
    ("DEP-JUSTICE", "司法局", "Justice Bureau", ("DS",)),
    (
        "DEP-EMERGENCY",
        "应急管理局",
        "Emergency Management Bureau",
        ("SF-0101", "SF-0102", "SF-0103", "SF-0104", "SF-0105", "SF-0109"),
    ),
    ("DEP-ECOLOGY", "生态环境分局", "Ecology and Environment Sub-bureau", ("EV",)),
    ("DEP-HOUSING", "住房和城乡建设局", "Housing and Urban-Rural Development Bureau", ("PM",)),
    (
        "DEP-HRSS",
        "人力资源和社会保障局",
        "Human Resources and Social Security Bureau",
        ("HR", "DS-0105"),
    ),
    ("DEP-POLICE", "公安分局", "Public Security Sub-bureau", ("SF-0106", "SF-0107", "SF-0108")),
)

HOUR = 3600
DAY = 86400

# Severity overrides most items share: a critical report of a hazard is a major/sudden matter.
_CRITICAL_MAJOR = {
    "critical": {"kind": "major", "dispatch_seconds": 300, "resolve_seconds": 4 * HOUR}
}


def _item(
    code: str,
    name: str,
    name_en: str,
    kind: str,
    dept: str,
    limits: dict[str, int] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": code,
        "name": name,
        "name_en": name_en,
        "kind": kind,
        "department": dept,
    }
    if limits:
        out["limits"] = limits
    if overrides:
        out["overrides"] = overrides
    return out


U, J, E, P, C, H, B, V = (
    "DEP-URBAN",
    "DEP-JUSTICE",
    "DEP-EMERGENCY",
    "DEP-POLICE",
    "DEP-CIVIL",
    "DEP-HRSS",
    "DEP-HOUSING",
    "DEP-ECOLOGY",
)

SUBCLASSES: dict[str, tuple[str, str, list[dict[str, Any]]]] = {
    "CM": (
        "市容环卫",
        "City appearance and sanitation",
        [
            _item(
                "CM-0101",
                "生活垃圾清运不及时",
                "Household garbage not collected",
                "general",
                U,
                {"resolve_seconds": 12 * HOUR},
                {"high": {"resolve_seconds": 4 * HOUR}},
            ),
            _item(
                "CM-0102",
                "楼道及公共通道杂物堆放",
                "Clutter in stairwells or shared paths",
                "general",
                U,
            ),
            _item("CM-0103", "占道经营", "Street vending blocking the road", "coordination", U),
            _item(
                "CM-0104",
                "违法建设",
                "Illegal construction",
                "district_wide",
                U,
                {"resolve_seconds": 7 * DAY},
                _CRITICAL_MAJOR,
            ),
            _item("CM-0105", "乱贴乱画", "Illegal posters and graffiti", "general", U),
            _item(
                "CM-0106",
                "道路破损",
                "Damaged road or pavement",
                "district_wide",
                U,
                {"resolve_seconds": 3 * DAY},
            ),
            _item(
                "CM-0107",
                "路灯不亮",
                "Street light out",
                "coordination",
                U,
                {"resolve_seconds": 2 * DAY},
            ),
            _item(
                "CM-0108",
                "井盖缺失破损",
                "Missing or broken manhole cover",
                "general",
                U,
                {"resolve_seconds": 4 * HOUR},
                {
                    "high": {"kind": "coordination"},
                    "critical": {"kind": "major", "dispatch_seconds": 300, "resolve_seconds": HOUR},
                },
            ),
            _item(
                "CM-0109",
                "绿化带毁损",
                "Damaged green belt",
                "coordination",
                U,
                {"resolve_seconds": 3 * DAY},
            ),
        ],
    ),
    "DS": (
        "矛盾纠纷",
        "Disputes",
        [
            _item(
                "DS-0101",
                "邻里纠纷",
                "Neighbour dispute",
                "general",
                J,
                None,
                {"high": {"kind": "coordination"}},
            ),
            _item("DS-0102", "家庭纠纷", "Family dispute", "general", J, None, _CRITICAL_MAJOR),
            _item(
                "DS-0103",
                "物业纠纷",
                "Dispute with the property manager",
                "coordination",
                J,
                {"resolve_seconds": 3 * DAY},
            ),
            _item(
                "DS-0104",
                "土地承包纠纷",
                "Land contract dispute",
                "coordination",
                J,
                {"resolve_seconds": 7 * DAY},
            ),
            _item(
                "DS-0105",
                "拖欠劳动报酬",
                "Unpaid wages",
                "district_wide",
                H,
                {"resolve_seconds": 7 * DAY},
                _CRITICAL_MAJOR,
            ),
            _item(
                "DS-0106",
                "宅基地纠纷",
                "Homestead boundary dispute",
                "coordination",
                J,
                {"resolve_seconds": 7 * DAY},
            ),
            _item(
                "DS-0107",
                "消费纠纷",
                "Consumer dispute",
                "general",
                J,
                {"resolve_seconds": 3 * DAY},
            ),
            _item(
                "DS-0108",
                "法律咨询与法律援助",
                "Legal advice and legal aid",
                "general",
                J,
                {"resolve_seconds": 3 * DAY},
            ),
        ],
    ),
    "SF": (
        "安全隐患",
        "Safety hazards",
        [
            _item(
                "SF-0101",
                "消防通道堵塞",
                "Blocked fire lane",
                "general",
                E,
                {"resolve_seconds": 4 * HOUR},
                {"high": {"kind": "coordination"}, **_CRITICAL_MAJOR},
            ),
            _item(
                "SF-0102",
                "电动车楼道充电",
                "E-bike charging in a stairwell",
                "general",
                E,
                {"resolve_seconds": 4 * HOUR},
                _CRITICAL_MAJOR,
            ),
            _item(
                "SF-0103",
                "燃气泄漏隐患",
                "Gas leak hazard",
                "major",
                E,
                {"accept_seconds": 30, "dispatch_seconds": 300, "resolve_seconds": 2 * HOUR},
            ),
            _item(
                "SF-0104",
                "安全生产隐患",
                "Production safety hazard",
                "district_wide",
                E,
                {"resolve_seconds": 3 * DAY},
                _CRITICAL_MAJOR,
            ),
            _item(
                "SF-0105",
                "危险化学品违规存放",
                "Hazardous chemicals stored unsafely",
                "district_wide",
                E,
                {"resolve_seconds": DAY},
                _CRITICAL_MAJOR,
            ),
            _item(
                "SF-0106",
                "治安隐患",
                "Public order hazard",
                "coordination",
                P,
                None,
                _CRITICAL_MAJOR,
            ),
            _item(
                "SF-0107",
                "社会生活噪声扰民",
                "Neighbourhood noise nuisance",
                "general",
                P,
                {"resolve_seconds": 12 * HOUR},
            ),
            _item(
                "SF-0108",
                "群租房安全隐患",
                "Overcrowded rental housing hazard",
                "coordination",
                P,
                {"resolve_seconds": 3 * DAY},
            ),
            _item(
                "SF-0109",
                "自然灾害险情",
                "Natural hazard (flooding, landslide, collapse risk)",
                "major",
                E,
                {"accept_seconds": 30, "dispatch_seconds": 300, "resolve_seconds": 6 * HOUR},
            ),
        ],
    ),
    "WF": (
        "民政救助",
        "Welfare and social assistance",
        [
            _item(
                "WF-0201",
                "最低生活保障申请",
                "Subsistence allowance (dibao) application",
                "approval",
                C,
                {"resolve_seconds": 15 * DAY, "callback_seconds": 3 * DAY},
            ),
            _item(
                "WF-0202",
                "特困人员救助供养",
                "Support for persons in extreme poverty",
                "approval",
                C,
                {"resolve_seconds": 15 * DAY, "callback_seconds": 3 * DAY},
            ),
            _item(
                "WF-0203",
                "临时救助",
                "Temporary assistance",
                "approval",
                C,
                {"resolve_seconds": 5 * DAY},
                {"critical": {"kind": "major", "resolve_seconds": DAY}},
            ),
            _item(
                "WF-0204",
                "高龄津贴办理",
                "Old-age allowance",
                "approval",
                C,
                {"resolve_seconds": 10 * DAY},
            ),
            _item(
                "WF-0205",
                "残疾人两项补贴",
                "Disability living and care subsidies",
                "approval",
                C,
                {"resolve_seconds": 10 * DAY},
            ),
            _item(
                "WF-0206",
                "独居老人探访",
                "Visit to an elderly person living alone",
                "general",
                C,
                None,
                {
                    "critical": {
                        "kind": "major",
                        "dispatch_seconds": 300,
                        "resolve_seconds": 2 * HOUR,
                    }
                },
            ),
            _item("WF-0207", "殡葬服务", "Funeral services", "coordination", C),
            _item(
                "WF-0208",
                "困境儿童帮扶",
                "Help for children in difficulty",
                "coordination",
                C,
                {"resolve_seconds": 3 * DAY},
            ),
        ],
    ),
    "HR": (
        "就业社保",
        "Employment and social security",
        [
            _item(
                "HR-0201",
                "就业失业登记",
                "Employment and unemployment registration",
                "approval",
                H,
                {"resolve_seconds": 5 * DAY},
            ),
            _item(
                "HR-0202",
                "灵活就业社保缴费",
                "Social insurance for flexible workers",
                "general",
                H,
                {"resolve_seconds": 3 * DAY},
            ),
            _item(
                "HR-0203",
                "城乡居民养老保险",
                "Urban and rural residents' pension",
                "approval",
                H,
                {"resolve_seconds": 10 * DAY},
            ),
            _item(
                "HR-0204",
                "居民医保参保",
                "Residents' medical insurance enrolment",
                "general",
                H,
                {"resolve_seconds": 3 * DAY},
            ),
            _item(
                "HR-0205",
                "职业技能培训报名",
                "Vocational training sign-up",
                "general",
                H,
                {"resolve_seconds": 5 * DAY},
            ),
            _item(
                "HR-0206",
                "公益性岗位申请",
                "Public-welfare job application",
                "approval",
                H,
                {"resolve_seconds": 10 * DAY},
            ),
        ],
    ),
    "PM": (
        "物业房屋",
        "Property management and housing",
        [
            _item(
                "PM-0301",
                "物业服务投诉",
                "Complaint about property management",
                "coordination",
                B,
                {"resolve_seconds": 3 * DAY},
            ),
            _item(
                "PM-0302",
                "电梯故障",
                "Lift breakdown",
                "coordination",
                B,
                {"resolve_seconds": 12 * HOUR},
                {
                    "critical": {
                        "kind": "major",
                        "accept_seconds": 30,
                        "dispatch_seconds": 300,
                        "resolve_seconds": HOUR,
                    }
                },
            ),
            _item("PM-0303", "太阳能热水器漏水", "Leaking solar water heater", "general", B),
            _item(
                "PM-0304",
                "房屋漏水维修",
                "Leaking roof or pipe repair",
                "general",
                B,
                {"resolve_seconds": 2 * DAY},
            ),
            _item(
                "PM-0305",
                "供暖不热",
                "Insufficient heating",
                "coordination",
                B,
                None,
                {"high": {"resolve_seconds": 12 * HOUR}},
            ),
            _item(
                "PM-0306",
                "老旧小区改造诉求",
                "Request to renovate an old compound",
                "district_wide",
                B,
                {"resolve_seconds": 30 * DAY, "callback_seconds": 3 * DAY},
            ),
            _item(
                "PM-0307",
                "房屋安全隐患",
                "Unsafe building",
                "district_wide",
                B,
                {"resolve_seconds": 3 * DAY},
                _CRITICAL_MAJOR,
            ),
            _item(
                "PM-0308",
                "住宅专项维修资金使用申请",
                "Use of the housing maintenance fund",
                "approval",
                B,
                {"resolve_seconds": 15 * DAY},
            ),
        ],
    ),
    "EV": (
        "生态环境",
        "Ecology and environment",
        [
            _item(
                "EV-0301",
                "河道畜禽养殖污染",
                "Livestock or duck farming polluting a river",
                "district_wide",
                V,
                {"resolve_seconds": 7 * DAY},
            ),
            _item(
                "EV-0302",
                "秸秆焚烧",
                "Straw burning",
                "coordination",
                V,
                {"resolve_seconds": 2 * HOUR},
                {"high": {"kind": "district_wide"}, **_CRITICAL_MAJOR},
            ),
            _item(
                "EV-0303",
                "餐饮油烟扰民",
                "Restaurant fumes",
                "district_wide",
                V,
                {"resolve_seconds": 5 * DAY},
            ),
            _item(
                "EV-0304",
                "工地扬尘",
                "Construction site dust",
                "district_wide",
                V,
                {"resolve_seconds": 2 * DAY},
            ),
            _item(
                "EV-0305",
                "污水直排",
                "Untreated sewage discharge",
                "district_wide",
                V,
                {"resolve_seconds": 3 * DAY},
                _CRITICAL_MAJOR,
            ),
            _item(
                "EV-0306",
                "工业噪声扰民",
                "Industrial noise",
                "district_wide",
                V,
                {"resolve_seconds": 5 * DAY},
            ),
        ],
    ),
}

# (code, name, English name, sub-class codes)
CLASSES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("ONSITE", "现场办", "Handled on site", ("CM", "DS", "SF")),
    ("ERRAND", "跑腿办", "Errand run for the resident", ("WF", "HR")),
    ("ONLINE", "网上办", "Handled online", ("PM", "EV")),
)

OTHER = {
    "code": "OTHER",
    "name": "其他事项",
    "name_en": "Other (placed by a dispatcher)",
    "kind": "general",
}


def catalogue() -> dict[str, Any]:
    return {
        "classes": [
            {
                "code": code,
                "name": name,
                "name_en": name_en,
                "subclasses": [
                    {
                        "code": s,
                        "name": SUBCLASSES[s][0],
                        "name_en": SUBCLASSES[s][1],
                        "items": SUBCLASSES[s][2],
                    }
                    for s in subs
                ],
            }
            for code, name, name_en, subs in CLASSES
        ],
        "other": OTHER,
    }
