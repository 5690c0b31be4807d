"""The code scheme of the hierarchy.

Each level appends a fixed number of digits to its parent's code, so a grid code carries its
street and community in its prefix (370105 → 370105001 → 370105001007 → 370105001007012), and
all codes are safe as NATS subject tokens.
"""

import re

CODE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
CODE_RE = re.compile(CODE_PATTERN)

STREET_DIGITS = 3
COMMUNITY_DIGITS = 3
COMPOUND_DIGITS = 2  # compound = community + 2 digits; 14 long, so never mistaken for a grid
GRID_DIGITS = 3  # grid = community + 3 digits: regrouping compounds does not recode grids
MICRO_GRID_DIGITS = 2


def is_child_code(parent: str, child: str, digits: int) -> bool:
    tail = child[len(parent) :]
    return (
        len(child) == len(parent) + digits
        and child.startswith(parent)
        and tail.isascii()
        and tail.isdigit()
    )


def grid_code_length(district_code: str) -> int:
    return len(district_code) + STREET_DIGITS + COMMUNITY_DIGITS + GRID_DIGITS


def community_code_of(grid_code: str) -> str:
    return grid_code[:-GRID_DIGITS]


def street_code_of(grid_code: str) -> str:
    return grid_code[: -(GRID_DIGITS + COMMUNITY_DIGITS)]
