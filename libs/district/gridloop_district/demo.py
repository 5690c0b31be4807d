"""Generate the demo district: `python -m gridloop_district.demo > demo_district.json`.

One district with one street modelled on 天平街道 (002): 37 villages/communities, 488 grids
(82 rural, 78 urban, 328 special-purpose), a few compounds per community and micro-grids per grid,
one grid team per grid, one committee per community, the street office and 8 departments.

Grids tile a lattice of jittered quadrilaterals around lat 36.65, lon 117.05. Communities take
consecutive runs along a Hilbert curve, so each is a compact contiguous patch; columns widen to
the east, where the villages lie, because rural grids cover more ground. Seeded: the output is the
same on every run.
"""

from __future__ import annotations

import json
import random
import re
import sys
from typing import Any

from . import demo_names as names
from .demo_catalogue import DEPARTMENTS, catalogue
from .geo import ring_centroid
from .loader import district_from_dict, district_to_dict

SEED = 20211204  # the day the 天平街道 report ran
DATA_VERSION = "2021.12-demo.1"
N_GRIDS, N_RURAL, N_URBAN = 488, 82, 78
N_COMMUNITIES = len(names.COMMUNITIES) + len(names.VILLAGES)  # 37
LON0, LAT0 = 117.005, 36.632
HILBERT_SIDE = 32  # the first 488 cells of a 32x32 curve fill a 32 x 16 half


def _hilbert(n: int, d: int) -> tuple[int, int]:
    x = y = 0
    s, t = 1, d
    while s < n:
        rx = 1 & (t // 2)
        ry = 1 & (t ^ rx)
        if ry == 0:
            if rx == 1:
                x, y = s - 1 - x, s - 1 - y
            x, y = y, x
        x, y = x + s * rx, y + s * ry
        t //= 4
        s *= 2
    return x, y


def _apportion(total: int, weights: list[int]) -> list[int]:
    """Largest-remainder split of `total`, at least one each."""
    rest = total - len(weights)
    raw = [rest * w / sum(weights) for w in weights]
    out = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], i))
    for i in by_remainder[: rest - sum(out)]:
        out[i] += 1
    return [o + 1 for o in out]


def _sizes(rng: random.Random) -> list[int]:
    sizes = [N_GRIDS // N_COMMUNITIES] * N_COMMUNITIES
    for i in rng.sample(range(N_COMMUNITIES), N_GRIDS - sum(sizes)):
        sizes[i] += 1
    for _ in range(120):
        a, b = rng.randrange(N_COMMUNITIES), rng.randrange(N_COMMUNITIES)
        if a != b and sizes[a] > 9 and sizes[b] < 18:
            sizes[a] -= 1
            sizes[b] += 1
    return sizes


def _lattice(rng: random.Random, ncols: int, nrows: int) -> list[list[tuple[float, float]]]:
    """Vertex [col][row] as (lon, lat); neighbours share vertices, so the cells tile exactly.
    A jitter under a fifth of a cell keeps every quadrilateral convex."""
    widths = [0.0020 + 0.00005 * c for c in range(ncols)]
    heights = [0.0021 + rng.uniform(-0.0002, 0.0002) for _ in range(nrows)]
    xs = [LON0 + sum(widths[:i]) for i in range(ncols + 1)]
    ys = [LAT0 + sum(heights[:j]) for j in range(nrows + 1)]
    verts = []
    for i in range(ncols + 1):
        w = min(widths[max(0, i - 1)], widths[min(ncols - 1, i)])
        column = []
        for j in range(nrows + 1):
            h = min(heights[max(0, j - 1)], heights[min(nrows - 1, j)])
            column.append(
                (
                    round(xs[i] + rng.uniform(-0.18, 0.18) * w, 6),
                    round(ys[j] + rng.uniform(-0.18, 0.18) * h, 6),
                )
            )
        verts.append(column)
    return verts


def _cell(
    verts: list[list[tuple[float, float]]], col: int, row: int
) -> tuple[list[list[float]], list[float]]:
    corners = [verts[col][row], verts[col + 1][row], verts[col + 1][row + 1], verts[col][row + 1]]
    ring = [list(p) for p in corners] + [list(corners[0])]
    cx, cy = ring_centroid(ring)
    return ring, [round(cx, 6), round(cy, 6)]


def build(seed: int = SEED) -> dict[str, Any]:
    rng = random.Random(seed)
    cells = [_hilbert(HILBERT_SIDE, d)[::-1] for d in range(N_GRIDS)]  # (col, row), wide east-west
    verts = _lattice(rng, max(c for c, _ in cells) + 1, max(r for _, r in cells) + 1)

    sizes = _sizes(rng)
    runs, start = [], 0
    for n in sizes:
        runs.append(cells[start : start + n])
        start += n
    east = sorted(
        range(N_COMMUNITIES), key=lambda k: (-sum(c for c, _ in runs[k]) / len(runs[k]), k)
    )
    villages = set(east[: len(names.VILLAGES)])
    v_idx = sorted(villages)
    c_idx = [k for k in range(N_COMMUNITIES) if k not in villages]
    main_count = dict(zip(v_idx, _apportion(N_RURAL, [sizes[k] for k in v_idx])))
    main_count.update(zip(c_idx, _apportion(N_URBAN, [sizes[k] for k in c_idx])))
    village_names = dict(zip(v_idx, names.VILLAGES))
    community_names = dict(zip(c_idx, names.COMMUNITIES))

    d_code, d_name, d_name_en = names.DISTRICT
    s_code = d_code + "001"
    communities, units = [], []
    for k, run in enumerate(runs):
        is_village = k in villages
        short, short_en = village_names[k] if is_village else community_names[k]
        community, committee, teams = _community(
            rng, f"{s_code}{k + 1:03d}", short, short_en, is_village, run, main_count[k], verts
        )
        communities.append(community)
        units += [committee, *teams]

    departments = [
        {
            "code": code,
            "name": f"{d_name}{name}",
            "name_en": f"{d_name_en} {name_en}",
            "kind": "department",
            "tier": "district",
            "area": d_code,
            "competence": list(competence),
        }
        for code, name, name_en, competence in DEPARTMENTS
    ]
    street_name, street_name_en = names.STREET
    office = {
        "code": f"SO-{s_code}",
        "name": f"{street_name}办事处网格化服务管理中心",
        "name_en": f"{street_name_en} Office, Grid Service Centre",
        "kind": "street_office",
        "tier": "street",
        "area": s_code,
    }
    return {
        "schema_version": 1,
        "data_version": DATA_VERSION,
        "code": d_code,
        "name": d_name,
        "name_en": d_name_en,
        "streets": [
            {
                "code": s_code,
                "name": street_name,
                "name_en": street_name_en,
                "communities": communities,
            }
        ],
        "units": [*departments, office, *units],
        "catalogue": catalogue(),
    }


def _community(
    rng: random.Random,
    code: str,
    short: str,
    short_en: str,
    is_village: bool,
    run: list[tuple[int, int]],
    n_main: int,
    verts: list[list[tuple[float, float]]],
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    name = f"{short}{'村' if is_village else '社区'}"
    name_en = f"{short_en} {'Village' if is_village else 'Community'}"
    main_kind = "rural" if is_village else "urban"
    main_at = set(rng.sample(range(len(run)), n_main))
    institutions = iter(rng.sample(names.INSTITUTIONS, len(run) - n_main))

    n_compounds = rng.randint(2, 3) if is_village else rng.randint(2, 4)
    base, extra = divmod(len(run), n_compounds)
    if is_village:
        parts = rng.sample(names.VILLAGE_PARTS, n_compounds)
        compound_names = [(f"{short}{p}", f"{short_en} {p_en} Area") for p, p_en in parts]
    else:
        combos = rng.sample(
            [(h, t) for h in names.COMPOUND_HEADS for t in names.COMPOUND_TAILS], n_compounds
        )
        compound_names = [(f"{h}{t}", None) for h, t in combos]

    compounds, teams, g, main_no = [], [], 0, 0
    for m, (c_name, c_name_en) in enumerate(compound_names):
        grids = []
        for _ in range(base + (1 if m < extra else 0)):
            g_code = f"{code}{g + 1:03d}"
            ring, centre = _cell(verts, *run[g])
            if g in main_at:
                main_no += 1
                kind, g_name, g_name_en = (
                    main_kind,
                    f"{name}第{main_no}网格",
                    f"{name_en} Grid {main_no}",
                )
                households = rng.randint(80, 200) if is_village else rng.randint(220, 380)
            else:
                inst, inst_en = next(institutions)
                kind, g_name, g_name_en = (
                    "special",
                    f"{short}{inst}专属网格",
                    f"{short_en} {inst_en} Special Grid",
                )
                households = None
            grid = {
                "code": g_code,
                "name": g_name,
                "name_en": g_name_en,
                "kind": kind,
                "boundary": [ring],
                "centre": centre,
                "micro_grids": _micro_grids(rng, g_code, kind),
            }
            if households is not None:
                grid["households"] = households
            grids.append(grid)
            teams.append(
                {
                    "code": f"GT-{g_code}",
                    "name": f"{g_name}服务团队",
                    "name_en": f"{g_name_en} Team",
                    "kind": "grid_team",
                    "tier": "grid",
                    "area": code,
                    "grids": [g_code],
                }
            )
            g += 1
        compound = {"code": f"{code}{m + 1:02d}", "name": c_name, "grids": grids}
        if c_name_en:
            compound["name_en"] = c_name_en
        compounds.append(compound)

    committee = {
        "code": f"CC-{code}",
        "name": f"{name}两委",
        "name_en": f"{name_en} Committee",
        "kind": "community_committee",
        "tier": "community",
        "area": code,
    }
    community = {
        "code": code,
        "name": name,
        "name_en": name_en,
        "kind": "village" if is_village else "community",
        "compounds": compounds,
    }
    return community, committee, teams


def _micro_grids(rng: random.Random, grid_code: str, kind: str) -> list[dict[str, str]]:
    if kind == "urban":
        n, label = rng.randint(2, 4), lambda i: (f"{i}号楼", f"Building {i}")
    elif kind == "rural":
        n, label = rng.randint(2, 4), lambda i: (f"第{i}村民小组", f"Villagers' Group {i}")
    else:
        n, label = rng.randint(1, 2), lambda i: (f"{i}号区域", f"Section {i}")
    return [
        {"code": f"{grid_code}{i:02d}", "name": label(i)[0], "name_en": label(i)[1]}
        for i in range(1, n + 1)
    ]


# One [lon, lat] per line keeps the file readable and diffable without doubling its size.
_POSITION = re.compile(r"\[\s+(-?[0-9.]+),\s+(-?[0-9.]+)\s+\]")


def render(seed: int = SEED) -> str:
    district = district_from_dict(build(seed), source="<demo generator>")
    text = json.dumps(district_to_dict(district), ensure_ascii=False, indent=1)
    return _POSITION.sub(r"[\1, \2]", text) + "\n"


def main() -> None:
    sys.stdout.buffer.write(render().encode("utf-8"))


if __name__ == "__main__":
    main()
