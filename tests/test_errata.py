"""The errata page (book/appendix_errata.md) stays consistent with itself.

Every entry ("### N. title") has exactly one category line ("**类别**：X") from a fixed set
and sits under the section of that category; the overview table and the summary table
("各类条目的数目", ``:name: errata-summary``) agree with the entries; the opening
conclusion names exactly the entries that are errors of the seed. Reads the Markdown
source only (no book build), so it runs in well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ERRATA = Path(__file__).resolve().parents[1] / "book" / "appendix_errata.md"

#: The fixed set of categories, in the order of the page's sections.
CATEGORIES = ("错误", "使用说明", "表述不严谨", "补充说明")
#: The category of the seed's clear-cut errors (issue 11: only #1 and #5).
ERROR = "错误"

ENTRY_RE = re.compile(r"^### (\d+)\. (.+)$", re.M)
SECTION_RE = re.compile(r"^## (.+)$", re.M)
CATEGORY_LINE_RE = re.compile(r"^\*\*类别\*\*：(.*)$", re.M)
LIST_TABLE_RE = re.compile(r"^```\{list-table\}(.*?)\n(.*?)^```", re.M | re.S)


def parse_list_table(block: str) -> tuple[dict, list[list[str]]]:
    """Options (``:name: x``) and rows (lists of cell texts) of a MyST list-table body."""
    options = dict(re.findall(r"^:([\w-]+):\s*(.*)$", block, re.M))
    rows: list[list[str]] = []
    for line in block.splitlines():
        if line.startswith("* - "):
            rows.append([line[4:].strip()])
        elif line.startswith("  - ") and rows:
            rows[-1].append(line[4:].strip())
    return options, rows


def numbers(cell: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", cell)]


def entries(text: str) -> dict[int, dict]:
    """Entry number -> {title, section, categories} for every '### N.' heading."""
    found: dict[int, dict] = {}
    sections = [(m.start(), m.group(1).strip()) for m in SECTION_RE.finditer(text)]
    heads = list(ENTRY_RE.finditer(text))
    for k, head in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(text)
        body = text[head.end():end]
        next_section = SECTION_RE.search(body)
        if next_section:
            body = body[: next_section.start()]
        section = [name for start, name in sections if start < head.start()]
        number = int(head.group(1))
        if number in found:
            found[number]["duplicate"] = True
            continue
        found[number] = {
            "title": head.group(2),
            "section": section[-1] if section else None,
            "categories": [c.strip() for c in CATEGORY_LINE_RE.findall(body)],
        }
    return found


def problems(text: str) -> list[str]:
    """Every inconsistency of an errata page; an empty list means consistent."""
    out: list[str] = []
    found = entries(text)
    if not found:
        return ["no entries ('### N. title') found"]
    if sorted(found) != list(range(1, len(found) + 1)):
        out.append(f"entry numbers are not 1..{len(found)}: {sorted(found)}")
    for number, entry in sorted(found.items()):
        if entry.get("duplicate"):
            out.append(f"entry {number} appears more than once")
        cats = entry["categories"]
        if len(cats) != 1:
            out.append(f"entry {number} has {len(cats)} category lines, not exactly one")
            continue
        if cats[0] not in CATEGORIES:
            out.append(f"entry {number}: unknown category {cats[0]!r}")
        if entry["section"] != cats[0]:
            out.append(f"entry {number} ({cats[0]}) sits under section {entry['section']!r}")
    category_of = {n: e["categories"][0] for n, e in found.items() if len(e["categories"]) == 1}

    # The definitions at the top name exactly the fixed set.
    defined = re.findall(r"^- \*\*(.+?)\*\*：", text[: text.find("```")], re.M)
    if tuple(defined) != CATEGORIES:
        out.append(f"the page defines the categories {defined}, expected {list(CATEGORIES)}")

    tables = [parse_list_table(m.group(2)) for m in LIST_TABLE_RE.finditer(text)]
    summary = [rows for options, rows in tables if options.get("name") == "errata-summary"]
    overview = [rows for options, rows in tables if rows and rows[0][:1] == ["编号"] and "类别" in rows[0]]
    if len(summary) != 1:
        out.append(f"expected one summary table (:name: errata-summary), found {len(summary)}")
    else:
        header, *rows = summary[0]
        listed = [row[0] for row in rows]
        if sorted(listed) != sorted(CATEGORIES) or len(listed) != len(set(listed)):
            out.append(f"summary table rows {listed} are not the categories {list(CATEGORIES)}")
        for row in rows:
            name, count, members = row[0], row[1], row[2] if len(row) > 2 else ""
            expected = sorted(n for n, c in category_of.items() if c == name)
            if not count.isdigit() or int(count) != len(expected):
                out.append(f"summary: {name} counts {count!r}, the entries below have {len(expected)}")
            if sorted(numbers(members)) != expected:
                out.append(f"summary: {name} lists {numbers(members)}, the entries below are {expected}")
    if len(overview) != 1:
        out.append(f"expected one overview table (编号 … 类别), found {len(overview)}")
    else:
        header, *rows = overview[0]
        col = header.index("类别")
        listed = {}
        for row in rows:
            listed.setdefault(int(row[0]), []).append(row[col])
        if sorted(listed) != sorted(found):
            out.append(f"overview lists entries {sorted(listed)}, the page has {sorted(found)}")
        for number, cats in sorted(listed.items()):
            if len(cats) != 1:
                out.append(f"overview lists entry {number} {len(cats)} times")
            elif number in category_of and cats[0] != category_of[number]:
                out.append(f"overview: entry {number} is {cats[0]!r}, below it is {category_of[number]!r}")

    # The opening conclusion: "N 条中，只有……第 a 条……和第 b 条……是原教程明确的错误".
    conclusion = re.search(r"^\*\*先说结论：(.+?)\*\*", text, re.M)
    if not conclusion:
        out.append("no opening conclusion ('**先说结论：…**') naming the errors")
    else:
        sentence = conclusion.group(1)
        total = re.search(r"(\d+) 条中", sentence)
        if not total or int(total.group(1)) != len(found):
            out.append(f"the conclusion does not give the number of entries ({len(found)})")
        named = sorted(int(n) for n in re.findall(r"第 (\d+) 条", sentence))
        errors = sorted(n for n, c in category_of.items() if c == ERROR)
        if named != errors:
            out.append(f"the conclusion names entries {named} as errors, the {ERROR} entries are {errors}")
    return out


def test_errata_page_is_consistent():
    assert problems(ERRATA.read_text(encoding="utf-8")) == []


def test_only_two_entries_are_errors_of_the_seed():
    # Issue 11: of the seed's faults only #1 (the MAE snippet computes MSE) and #5 (the MSE
    # gradient misses 1/n) are clear-cut errors; everything else is a note.
    found = entries(ERRATA.read_text(encoding="utf-8"))
    errors = sorted(n for n, e in found.items() if e["categories"] == [ERROR])
    assert errors == [1, 5]
    assert "MAE" in found[1]["title"] and "MSE" in found[1]["title"]
    assert "MSE" in found[5]["title"] and "1/n" in found[5]["title"]


# -- the checker itself finds each kind of inconsistency --------------------------------

SAMPLE = """# 附录：勘误

**先说结论：下面 3 条中，只有第 1 条是原教程明确的错误。** 其余是说明。

- **错误**：写错了；
- **使用说明**：前提没写；
- **表述不严谨**：记号含糊；
- **补充说明**：值得补上。

```{list-table} 各类条目的数目
:header-rows: 1
:name: errata-summary

* - 类别
  - 条数
  - 编号
* - 错误
  - 1
  - 1
* - 使用说明
  - 1
  - 2
* - 表述不严谨
  - 0
  - —
* - 补充说明
  - 1
  - 3
```

```{list-table}
:header-rows: 1

* - 编号
  - 问题
  - 类别
* - 1
  - a
  - 错误
* - 2
  - b
  - 使用说明
* - 3
  - c
  - 补充说明
```

## 错误

### 1. 第一条

**类别**：错误

正文。

## 使用说明

### 2. 第二条

**类别**：使用说明

## 补充说明

### 3. 第三条

**类别**：补充说明
"""


def test_checker_accepts_a_consistent_sample():
    assert problems(SAMPLE) == []


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("  - 1\n  - 2\n", "  - 2\n  - 2\n", "summary: 使用说明 counts '2'"),
        ("  - 1\n  - 3\n", "  - 1\n  - 2、3\n", "summary: 补充说明 lists [2, 3]"),
        ("**类别**：使用说明", "**类别**：代码错误", "entry 2: unknown category '代码错误'"),
        ("**类别**：补充说明\n", "**类别**：补充说明\n\n**类别**：错误\n", "entry 3 has 2 category lines"),
        ("### 2. 第二条\n\n**类别**：使用说明\n", "### 2. 第二条\n", "entry 2 has 0 category lines"),
        ("  - b\n  - 使用说明", "  - b\n  - 补充说明", "overview: entry 2 is '补充说明'"),
        ("## 使用说明\n", "", "entry 2 (使用说明) sits under section '错误'"),
        ("只有第 1 条", "只有第 1 条和第 2 条", "the conclusion names entries [1, 2]"),
        ("下面 3 条中", "下面 14 条中", "the conclusion does not give the number"),
        ("### 3. 第三条", "### 4. 第三条", "entry numbers are not 1..3"),
        ("- **表述不严谨**：记号含糊；\n", "", "the page defines the categories"),
    ],
)
def test_checker_reports_each_inconsistency(old, new, expected):
    assert SAMPLE.count(old) >= 1, old
    broken = SAMPLE.replace(old, new, 1)
    found = problems(broken)
    assert any(expected in p for p in found), found
