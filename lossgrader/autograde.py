"""``lossgrader autograde``: the coordinator of a grading batch.

The coordinator is the only process that opens the gradebook or writes course files:

1. it refuses to start when the sandbox cannot run (unless told ``--no-sandbox``) or the
   gradebook is unreadable (never overwriting it), registers the assignments and backs
   the gradebook up (``.lossgrader/backups/``);
2. it builds one task per hand-in, plain data (the hand-in's bytes, what was released,
   the options), and hands the tasks to an executor (``lossgrader.executors``: the local
   pool, ``-j N`` threads each driving one sandboxed kernel at a time, or a Dask cluster);
3. for each result, as it arrives: a hand-in whose grading failed for the grader's own
   reasons (including a worker that died, or a task that gave no result within the
   hand-in's limit plus a margin) is graded once more, then recorded as 0 with its
   reason; the result is written
   in one gradebook transaction, its autograded notebook into ``autograded/`` and its
   status into ``lossgrader-status.json``.

A worker's result is untrusted data (it may come from a Dask worker, and most of it was
produced by the hand-in): before anything is written the coordinator takes the student and
assignment from its own task, checks every field's type, and caps everything it keeps of one
hand-in (``bound_result``): the autograded notebook (``MAX_AUTOGRADED_BYTES``: outputs are
dropped first, with a Chinese note in their place), the status entry
(``MAX_STATUS_ENTRY_BYTES``, stored messages cut to ``MAX_MESSAGE_CHARS``, at most
``MAX_CASES`` case records) and the log (``MAX_LOG_CHARS``). What was cut is said in English
in the status entry (``"capped"``) and at the end of the hand-in's log.
"""
from __future__ import annotations

import datetime
import html
import json
import math
import os
import shutil
import sys
import time

from . import course, executors, gradebook
from .results import CaseRecord, HandinResult
from .worker import DEFAULT_TIMEOUT

RETRIED = ("grading failed:",)   # reasons that are the grader's fault: worth a second try
UNSAFE_WARNING = ("WARNING: --no-sandbox: student code runs with YOUR permissions, unconfined: it can read, "
                  "change or delete any file you can (the gradebook, other hand-ins, the grader) and use "
                  "the network. Use it only for hand-ins you trust.\n")


class SandboxUnavailable(SystemExit):
    pass


def require_sandbox() -> None:
    from .sandbox import bwrap_problem

    problem = bwrap_problem()
    if problem:
        raise SandboxUnavailable(
            f"lossgrader autograde: cannot sandbox student code here: {problem}\n"
            "Install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap) and make sure "
            "unprivileged user namespaces are enabled, or pass --no-sandbox to grade without "
            "a sandbox (UNSAFE: only for hand-ins you trust).")


def _read_handin(root, student, aid, names):
    """{notebook name: file bytes or None} of one hand-in (read by the coordinator)."""
    files = {}
    for name in names:
        path = os.path.join(root, "submitted", student, aid, name + ".ipynb")
        try:
            with open(path, "rb") as fh:
                files[name] = fh.read()
        except OSError:
            files[name] = None
    return files


def make_task(root, student, aid, released, options) -> dict:
    notebooks = released["notebooks"]
    return {"student": student, "assignment": aid, "released": notebooks,
            "notebooks": _read_handin(root, student, aid, sorted(notebooks)), **options}


def _write_autograded(root, result: HandinResult) -> None:
    """autograded/<student>/<assignment>/: the graded notebooks, or nothing for a failure."""
    dest = os.path.join(root, "autograded", result.student, result.assignment)
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    if result.status != "graded":
        return
    os.makedirs(dest)
    for name, text in result.notebooks.items():
        if not name or name.startswith(".") or os.path.basename(name) != name or "\0" in name:
            continue        # not a plain file name: never a released notebook's
        tmp = os.path.join(dest, f".{name}.ipynb.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, os.path.join(dest, name + ".ipynb"))
    course.copy_nbgrader_files(root, result.student, result.assignment, dest)


# --------------------------------------------------------------------------------------
# What is kept of one hand-in: caps on whatever a worker returned
# --------------------------------------------------------------------------------------
# An honest hand-in stays far below each cap: about 0.1 MB of autograded notebook plus what
# its cells print, 10-30 KB of status entry (70-110 case records, messages under 400
# characters), a few KB of log.

MAX_AUTOGRADED_BYTES = 8 * 2 ** 20
"""autograded/<student>/<assignment>/: all notebooks of one hand-in together (UTF-8 JSON)."""
MAX_PARSED_NOTEBOOK_BYTES = 512 * 2 ** 20
"""A notebook text larger than this is not even parsed: the hand-in fails with the reason."""
MAX_STATUS_ENTRY_BYTES = 128 * 2 ** 10
"""One hand-in's entry in lossgrader-status.json (rewritten after every hand-in of a batch)."""
MAX_CASES = 1_000
"""Case records kept per hand-in (an assignment has about a hundred)."""
MAX_MESSAGE_CHARS = 1_000
"""A case's message or hint as stored; cut to SHORT_MESSAGE_CHARS when the entry is too big."""
SHORT_MESSAGE_CHARS = 200
MAX_REASON_CHARS = 1_000
"""The reason a hand-in failed (or a graded one's remark), as stored."""
MAX_LOG_CHARS = 500_000
"""The worker's log kept in .lossgrader/logs/ (its beginning and its end)."""
MAX_TIMINGS = 32
_CASE_FIELD_CHARS = {"grade_id": 100, "exercise": 100, "case": 200, "status": 20}
_KEEP_OUTPUT_CHARS = 1_000      # the beginning of a dropped cell's first text output, kept
_KEEP_SOURCE_CHARS = 20_000     # a source longer than this is cut when the notebook is too big
_MAX_METADATA_BYTES = 16_384    # a cell's or notebook's metadata larger than this keeps its small keys
_SMALL_METADATA_BYTES = 4_096
_NOTE_BYTES = 600               # a note output or line, with margin
_RECORD_INDENT_BYTES = 64       # what lossgrader-status.json's indentation adds to one case record, at most


def _mib(n) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n >= 100 * 1024 else f"{max(1, round(n / 1024))} KiB"


def _mb_zh(n) -> str:
    return f"{n / 2 ** 20:.1f} MB" if n >= 100_000 else f"{max(1, round(n / 1024))} KB"


def _encodable(text: str) -> str:
    """text with anything UTF-8 cannot store (lone surrogates) replaced by '?'."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _cut(text: str, limit: int) -> str:
    """text, or its beginning and an English marker of the cut: at most `limit` characters."""
    if len(text) <= limit:
        return text
    marker = f" … [cut by lossgrader: {len(text):,} characters]"
    return text[:max(0, limit - len(marker))] + marker


def _text(value, limit: int) -> str:
    """A stored string: str (numbers written out, anything else empty), encodable, at most
    `limit` characters (a cut one ends with an English marker)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    return _encodable(_cut(value if isinstance(value, str) else repr(value), limit))


def _json_bytes(value) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _cap_log(log) -> str:
    text = log if isinstance(log, str) else ""
    if len(text) > MAX_LOG_CHARS:
        head, tail = (MAX_LOG_CHARS - 200) * 4 // 5, (MAX_LOG_CHARS - 200) // 5
        text = (text[:head] + f"\n[lossgrader: {len(text) - head - tail:,} characters of the worker's log "
                f"dropped here (cap {MAX_LOG_CHARS:,} characters per hand-in)]\n" + text[-tail:])
    return _encodable(text)


def _cap_cases(cases, notes: list) -> list:
    """Case records with every field a bounded str, at most MAX_CASES of them."""
    kept = []
    cases = cases if isinstance(cases, list) else []
    for case in cases[:MAX_CASES]:
        fields = case.__dict__ if isinstance(case, CaseRecord) else case if isinstance(case, dict) else {}
        record = {name: _text(fields.get(name), limit) for name, limit in _CASE_FIELD_CHARS.items()}
        record["message"] = _text(fields.get("message"), MAX_MESSAGE_CHARS)
        hint = fields.get("hint")
        record["hint"] = None if hint is None else _text(hint, MAX_MESSAGE_CHARS)
        kept.append(CaseRecord(**record))
    if len(cases) > MAX_CASES:
        notes.append(f"case records: {len(cases):,} returned, the first {MAX_CASES:,} kept")
    return kept


def _status_cases(cases: list, fixed: dict, notes: list) -> list:
    """The case records of a status entry, within MAX_STATUS_ENTRY_BYTES with the rest of it."""
    records = [dict(c.__dict__) for c in cases]
    # sizes as written (indented, sorted keys): compact JSON plus what indentation adds per record
    room = MAX_STATUS_ENTRY_BYTES - _json_bytes(fixed) - 4_000     # the "capped" lines, with margin
    if _json_bytes(records) + _RECORD_INDENT_BYTES * len(records) <= room:
        return records
    for record in records:
        for key in ("message", "hint"):
            if isinstance(record[key], str):
                record[key] = _cut(record[key], SHORT_MESSAGE_CHARS)
    notes.append(f"status entry: case messages and hints cut to {SHORT_MESSAGE_CHARS} characters "
                 f"(cap {MAX_STATUS_ENTRY_BYTES // 1024} KiB per hand-in)")
    size, kept = 2, []
    for record in records:
        size += _json_bytes(record) + _RECORD_INDENT_BYTES
        if size > room:
            break
        kept.append(record)
    if len(kept) < len(records):
        notes.append(f"status entry: {len(records) - len(kept):,} of {len(records):,} case records dropped "
                     f"(cap {MAX_STATUS_ENTRY_BYTES // 1024} KiB per hand-in)")
    return kept


def _note_output(text: str) -> dict:
    """A note of ours in a cell's outputs (shown as a yellow box in the feedback page)."""
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/plain": text, "text/html": f'<div class="lg-cut-note">{html.escape(text)}</div>'}}


def _source_text(cell) -> str:
    source = cell.get("source", "")
    if isinstance(source, list):
        return "".join(s for s in source if isinstance(s, str))
    return source if isinstance(source, str) else ""


def _nbgrader(cell):
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    meta = meta.get("nbgrader") if isinstance(meta, dict) else None
    return meta if isinstance(meta, dict) else None


def _is_test(cell) -> bool:
    meta = _nbgrader(cell)
    return bool(meta and meta.get("grade") and not meta.get("solution")) and cell.get("cell_type") == "code"


def _first_text(outputs) -> str:
    for out in outputs:
        if isinstance(out, dict) and out.get("output_type") == "stream":
            text = out.get("text", "")
            text = "".join(t for t in text if isinstance(t, str)) if isinstance(text, list) else text
            if isinstance(text, str) and text:
                return text
    return ""


class _NotebookCaps:
    """Cut the notebooks of one hand-in (parsed JSON) until their text fits ``cap`` bytes,
    in this order, each only while they are still too big: metadata that is not small,
    the outputs (and markdown attachments) of the hand-in's own cells, largest cell first,
    the test cells' outputs, sources longer than _KEEP_SOURCE_CHARS, and last the cells
    that are not graded. Each cut leaves a Chinese note where the student will look."""

    def __init__(self, notebooks: dict, cap: int):
        self.notebooks, self.cap = notebooks, cap
        self.counts = {"metadata": 0, "outputs": 0, "attachments": 0, "reports": 0, "sources": 0, "cells": 0}

    def texts(self) -> dict:
        # without indentation: each part's size measured alone is then its size in the file
        return {name: _encodable(json.dumps(nb, ensure_ascii=False, sort_keys=True) + "\n")
                for name, nb in self.notebooks.items()}

    def cells(self):
        for nb in self.notebooks.values():
            cells = nb.get("cells")
            if isinstance(cells, list):
                yield from (c for c in cells if isinstance(c, dict))

    def cut(self, total: int, budget: int) -> int:
        for step in (self._metadata, self._outputs, self._reports, self._sources, self._cells):
            if total <= budget:
                break
            total = step(total, budget)
        return total

    def _metadata(self, total, budget):
        holders = [nb for nb in self.notebooks.values()] + list(self.cells())
        for holder in holders:
            meta = holder.get("metadata")
            if not isinstance(meta, dict):
                continue
            size = _json_bytes(meta)
            if size > _MAX_METADATA_BYTES:
                holder["metadata"] = {k: v for k, v in meta.items()
                                      if isinstance(k, str) and _json_bytes(v) <= _SMALL_METADATA_BYTES}
                total -= size - _json_bytes(holder["metadata"])
                self.counts["metadata"] += 1
        return total

    def _outputs(self, total, budget):
        found = []
        for cell in self.cells():
            if _is_test(cell):
                continue
            if cell.get("cell_type") == "code" and isinstance(cell.get("outputs"), list):
                found.append((_json_bytes(cell["outputs"]), id(cell), cell, "outputs"))
            elif isinstance(cell.get("attachments"), dict):
                found.append((_json_bytes(cell["attachments"]), id(cell), cell, "attachments"))
        for size, _, cell, key in sorted(found, key=lambda f: (-f[0], f[1])):
            if total <= budget or size <= _NOTE_BYTES + _KEEP_OUTPUT_CHARS * 4:
                break
            if key == "outputs":
                head = _first_text(cell["outputs"])
                kept = []
                if head:
                    kept.append({"output_type": "stream", "name": "stdout", "text": _encodable(head[:_KEEP_OUTPUT_CHARS])})
                note = f"（这个单元的输出共 {_mb_zh(size)}，超出了每份作业保存输出的上限（{_mb_zh(self.cap)}），已删去"
                note += f"，上面只保留了开头 {_KEEP_OUTPUT_CHARS:,} 个字符。）" if head else "。）"
                kept.append(_note_output(note))
                cell["outputs"] = kept
                total -= size - _json_bytes(kept)
            else:
                del cell["attachments"]
                note = f"\n\n（这个单元的附件共 {_mb_zh(size)}，超出了每份作业保存内容的上限（{_mb_zh(self.cap)}），已删去。）"
                cell["source"] = _source_text(cell) + note
                total -= size - _json_bytes(note)
            self.counts[key] += 1
        return total

    def _reports(self, total, budget):
        found = [(_json_bytes(c["outputs"]), id(c), c) for c in self.cells()
                 if _is_test(c) and isinstance(c.get("outputs"), list)]
        for size, _, cell in sorted(found, key=lambda f: (-f[0], f[1])):
            if total <= budget or size <= _NOTE_BYTES:
                break
            cell["outputs"] = [_note_output(f"（评分报告共 {_mb_zh(size)}，超出了每份作业保存内容的上限，已删去；"
                                            "这个测试的得分已记入成绩表。）")]
            total -= size - _json_bytes(cell["outputs"])
            self.counts["reports"] += 1
        return total

    def _sources(self, total, budget):
        found = [(len(_source_text(c)), id(c), c) for c in self.cells()]
        for n, _, cell in sorted(found, key=lambda f: (-f[0], f[1])):
            if total <= budget or n <= _KEEP_SOURCE_CHARS:
                break
            text = _source_text(cell)
            old = _json_bytes(cell.get("source", ""))
            note = f"（此单元共 {n:,} 个字符，超出了每份作业保存内容的上限，只保留了开头 {_KEEP_SOURCE_CHARS:,} 个字符）"
            cell["source"] = text[:_KEEP_SOURCE_CHARS] + ("\n# …" if cell.get("cell_type") == "code" else "\n\n…") + note
            total -= old - _json_bytes(cell["source"])
            self.counts["sources"] += 1
        return total

    def _cells(self, total, budget):
        for nb in self.notebooks.values():
            cells = nb.get("cells")
            if not isinstance(cells, list):
                continue
            found = sorted(((_json_bytes(c), i) for i, c in enumerate(cells) if _nbgrader(c) is None),
                           reverse=True)
            drop = set()
            for size, i in found:
                if total <= budget:
                    break
                drop.add(i)
                total -= size
            if drop:
                nb["cells"] = [c for i, c in enumerate(cells) if i not in drop]
                note = {"cell_type": "markdown", "metadata": {}, "source":
                        f"（为了不超过每份作业保存内容的上限（{_mb_zh(self.cap)}），删去了 {len(drop):,} 个未评分的单元。）"}
                if isinstance(nb.get("nbformat_minor"), int) and nb["nbformat_minor"] >= 5:
                    note["id"] = "lossgrader-cut-cells"          # nbformat 4.5 cells have ids
                nb["cells"].append(note)
                total += _NOTE_BYTES
                self.counts["cells"] += len(drop)
        return total

    def summary(self) -> str:
        words = {"metadata": "metadata reduced to its small keys in {} places",
                 "outputs": "outputs of {} cells dropped", "attachments": "attachments of {} cells dropped",
                 "reports": "the grader's reports of {} test cells dropped", "sources": "{} sources cut",
                 "cells": "{} ungraded cells dropped"}
        return ", ".join(words[k].format(f"{n:,}") for k, n in self.counts.items() if n)


def _cap_notebooks(notebooks: dict, cap: int = MAX_AUTOGRADED_BYTES):
    """(notebooks as kept, English notes, a reason to fail the hand-in or None) for the
    autograded notebooks of one hand-in, at most ``cap`` bytes together."""
    sizes = {name: len(text.encode("utf-8", "surrogatepass")) for name, text in notebooks.items()}
    total = sum(sizes.values())
    if total <= cap:
        return {name: _encodable(text) for name, text in notebooks.items()}, [], None
    parsed = {}
    for name, text in notebooks.items():
        if sizes[name] > MAX_PARSED_NOTEBOOK_BYTES:
            return {}, [], (f"invalid grading result: the autograded notebook {name} is {_mib(sizes[name])}, "
                            f"more than the coordinator reads ({_mib(MAX_PARSED_NOTEBOOK_BYTES)})")
        try:
            nb = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return {}, [], f"invalid grading result: the autograded notebook {name} is not JSON ({exc})"[:MAX_REASON_CHARS]
        if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
            return {}, [], f"invalid grading result: the autograded notebook {name} is not a notebook"
        parsed[name] = nb
    caps = _NotebookCaps(parsed, cap)
    texts = caps.texts()
    size = sum(len(t.encode("utf-8")) for t in texts.values())
    budget = cap - 4 * _NOTE_BYTES
    for _ in range(3):
        if size <= cap:
            break
        caps.cut(size, budget)
        texts = caps.texts()
        new = sum(len(t.encode("utf-8")) for t in texts.values())
        if new >= size:
            break       # nothing left to cut
        budget = int(budget * 0.9 * cap / new) if new > cap else budget
        size = new
    if size > cap:
        return {}, [], (f"invalid grading result: the autograded notebooks are still {_mib(size)} after "
                        f"dropping every output and every ungraded cell (cap {_mib(cap)})")
    note = (f"autograded notebook: {_mib(total)} returned, over the {_mib(cap)} cap per hand-in: "
            f"{caps.summary()}; {_mib(size)} kept (a Chinese note marks each cut)")
    return texts, [note], None


def accept_result(result: HandinResult, student: str, assignment: str, released: dict) -> HandinResult:
    """A worker's result made to name what the coordinator asked for: the task's student and
    assignment, the released points and the released notebooks only (these name files and
    rows; a worker's own say is never taken), and a reason that is a bounded string."""
    result.student, result.assignment, result.max_scores = student, assignment, _max_scores(released)
    result.reason = _text(result.reason, MAX_REASON_CHARS)
    if isinstance(result.notebooks, dict):
        result.notebooks = {k: v for k, v in result.notebooks.items() if k in released["notebooks"]}
    return result


def bound_result(result: HandinResult, cap: int = MAX_AUTOGRADED_BYTES):
    """The result as the coordinator keeps it, and the English notes of what was cut.

    Types are checked (a field of the wrong type makes the hand-in a failure with the
    reason), strings made storable and cut, the notebooks capped (``_cap_notebooks``); the
    status entry is capped when it is written (``status_entry``)."""
    notes = []
    reason = _text(result.reason, MAX_REASON_CHARS)
    log = _cap_log(result.log)
    if len(result.log if isinstance(result.log, str) else "") > MAX_LOG_CHARS:
        notes.append(f"log: {len(result.log):,} characters returned, cut to {MAX_LOG_CHARS:,}")
    max_scores = result.max_scores if isinstance(result.max_scores, dict) else {}
    max_scores = {k: float(v) for k, v in max_scores.items() if isinstance(k, str) and _number(v) is not None}
    timings = result.timings if isinstance(result.timings, dict) else {}
    timings = {_text(k, 64): float(v) for k, v in list(timings.items())[:MAX_TIMINGS]
               if isinstance(k, str) and _number(v) is not None and math.isfinite(v)}
    attempts = result.attempts if isinstance(result.attempts, int) and not isinstance(result.attempts, bool) else 1
    cases = _cap_cases(result.cases, notes)

    def failed(why):
        return HandinResult.failure(result.student, result.assignment, why[:MAX_REASON_CHARS], max_scores,
                                    log=log, timings=timings, attempts=attempts, cases=cases), notes

    if result.status == "failed":
        return failed(reason)
    scores, notebooks = result.scores, result.notebooks
    if not isinstance(scores, dict) or not all(isinstance(k, str) and (v is None or _number(v) is not None)
                                               for k, v in scores.items()):
        return failed("invalid grading result: the scores are not {grade id: number}")
    if not isinstance(notebooks, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in notebooks.items()):
        return failed("invalid grading result: the notebooks are not {name: notebook text}")
    notebooks, more, problem = _cap_notebooks(notebooks, cap)
    notes += more
    if problem:
        return failed(problem)
    review = result.review if isinstance(result.review, dict) else {}
    review = {k: {"reason": _text(v.get("reason"), MAX_REASON_CHARS), "auto_score": float(v["auto_score"])}
              for k, v in list(review.items())[:len(scores)]
              if k in scores and isinstance(v, dict) and _number(v.get("auto_score")) is not None}
    kept = HandinResult(result.student, result.assignment, status=result.status, reason=reason,
                        scores=dict(scores), max_scores=max_scores, notebooks=notebooks, cases=cases,
                        timings=timings, log=log, attempts=attempts, review=review)
    return kept, notes


def status_entry(result: HandinResult, seconds: float, notes: list) -> dict:
    """The hand-in's entry in lossgrader-status.json, at most MAX_STATUS_ENTRY_BYTES."""
    entry = {
        "status": "autograded" if result.status == "graded" else "failed",
        "reason": _text(result.reason, MAX_REASON_CHARS), "seconds": round(seconds, 2),
        "attempts": result.attempts, "score": round(result.score, 4), "max_score": round(result.max_score, 4),
        "timings": result.timings,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    entry["cases"] = _status_cases(result.cases, entry, notes)
    if notes:
        entry["capped"] = [_text(n, 300) for n in notes[:5]]
    return entry


class Progress:
    """Done, failed and remaining hand-ins with an ETA (tqdm on a terminal, one plain line
    per hand-in otherwise, nothing with quiet)."""

    def __init__(self, total, stream=None, quiet=False):
        self.stream = stream or sys.stderr
        self.total, self.done, self.failed, self.quiet = total, 0, 0, quiet
        self.bar = None
        if not quiet and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm
            self.bar = tqdm(total=total, file=self.stream, unit="份", dynamic_ncols=True, desc="autograde")

    def step(self, result: HandinResult, seconds: float):
        self.done += 1
        self.failed += result.status != "graded"
        if self.quiet:
            return
        text = f"{result.student}/{result.assignment} {result.score:g}/{result.max_score:g} {seconds:.1f}s"
        if result.status != "graded":
            text += " FAILED: " + result.reason[:100]
        if self.bar is not None:
            self.bar.set_postfix_str(f"failed {self.failed}, last {text}"[:120])
            self.bar.update(1)
        else:
            self.stream.write(f"autograde [{self.done}/{self.total}, failed {self.failed}] {text}\n")
            self.stream.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def autograde(root, only_assignments=None, only_students=None, cell_timeout=None,
              submission_timeout=DEFAULT_TIMEOUT, progress=True, stream=None, jobs=1,
              sandbox=True, limits=None, device=None, quiet=False, dask=None, hang_margin=None):
    """Grade every hand-in in submitted/ (or the selected ones); returns {(student, aid): status entry}.

    ``jobs``: threads of the local pool; ``dask``: grade on Dask instead (``local[:N]``,
    ``tcp://HOST:PORT`` or a scheduler file, see lossgrader.executors); ``hang_margin``:
    seconds past ``submission_timeout`` before a task that gave no result is abandoned."""
    import torch

    stream = stream or sys.stderr
    if sandbox:
        require_sandbox()
    else:
        stream.write(UNSAFE_WARNING)
    url = gradebook.db_url(root)
    gradebook.check_readable(url)
    pairs = course.submissions(root, only_assignments, only_students)
    aids = sorted({a for _, a in pairs})
    gradebook.register(root, aids)
    if pairs:
        gradebook.backup(root)
    released = {aid: gradebook.released(root, aid) for aid in aids}
    options = {"sandbox": bool(sandbox), "limits": dict(limits or {}), "timeout": float(submission_timeout),
               "cell_timeout": cell_timeout or course.cell_timeout(root),
               "device": str(device or os.environ.get("LOSSGRADER_DEVICE") or "cpu"),
               "hide": [os.path.abspath(root)]}
    torch.set_num_threads(1)
    status = course.read_status(root)
    executor = executors.open_executor(dask, jobs=min(jobs, len(pairs) or 1), sandbox=sandbox)
    bar = Progress(len(pairs), stream, quiet=quiet or not progress)
    results = {}

    def failure(student, aid, reason, attempts):
        return HandinResult.failure(student, aid, reason[:300], _max_scores(released[aid]), attempts=attempts)

    limit = float(submission_timeout) + (executors.HANG_MARGIN if hang_margin is None else float(hang_margin))
    queue = list(pairs)
    in_flight = {}   # executor handle -> {"pair", "task", "attempt", "t0", "unstarted"}

    def submit(pair, task=None, attempt=1, t0=None, unstarted=0):
        task = task or make_task(root, pair[0], pair[1], released[pair[1]], options)
        handle = executor.submit(task)
        in_flight[handle] = {"pair": pair, "task": task, "attempt": attempt, "t0": t0 or time.monotonic(),
                             "unstarted": unstarted}

    def finish(job, result, reason):
        """Record the hand-in, or grade it once more when this try failed for the grader's reasons."""
        student, aid = job["pair"]
        if result is not None and not isinstance(result, HandinResult):
            result, reason = None, f"grading failed: the worker returned {type(result).__name__}, not a result"
        if result is not None:
            result = accept_result(result, student, aid, released[aid])
        if result is None or (result.status != "graded" and result.reason.startswith(RETRIED)):
            if job["attempt"] < 2:
                submit(job["pair"], job["task"], job["attempt"] + 1, job["t0"])
                return
            if result is None:
                result = failure(student, aid, reason, job["attempt"])
        result.attempts = job["attempt"]
        seconds = time.monotonic() - job["t0"]
        record(root, result, status, seconds, url)
        results[(student, aid)] = status[f"{student}/{aid}"]
        bar.step(result, seconds)

    try:
        while queue or in_flight:
            while queue and len(in_flight) < executor.capacity():
                submit(queue.pop(0))
            for handle in executor.wait(list(in_flight), timeout=1.0):
                job = in_flight.pop(handle, None)
                if job is None:          # a task given up on before it came back
                    continue
                try:
                    result, reason = executor.outcome(handle), ""
                except executors.WorkerDied as exc:
                    if not exc.started and job["unstarted"] < executors.MAX_UNSTARTED_RETRIES:
                        # it waited behind another hand-in on a worker that died: not its try
                        submit(job["pair"], job["task"], job["attempt"], job["t0"], job["unstarted"] + 1)
                        continue
                    result, reason = None, f"grading failed: worker process died while grading ({exc})"
                except Exception as exc:  # never lose the batch over one hand-in
                    result, reason = None, f"grading failed: {exc.__class__.__name__}: {exc}"
                finish(job, result, reason)
            now = time.monotonic()
            for handle, job in list(in_flight.items()):
                started = executor.started(handle)
                if started is not None and now - started > limit:
                    del in_flight[handle]
                    executor.abandon(handle)
                    finish(job, None, f"grading failed: time limit exceeded: no result within {limit:.0f} s "
                                      "(the hand-in's limit plus a margin); the task was abandoned")
    finally:
        bar.close()
        executor.close()
    return results


def _max_scores(released) -> dict:
    return {c["name"]: c["points"] for nb in released["notebooks"].values() for c in nb["cells"]
            if c["points"] is not None and c["kind"] in ("grade", "grade+solution")}


def record(root, result: HandinResult, status: dict, seconds: float, url=None) -> None:
    """The coordinator's writes for one hand-in: gradebook, autograded/, status file, log;
    each within its cap (bound_result, status_entry)."""
    result, notes = bound_result(result)
    timestamp = gradebook.submission_timestamp(root, result.student, result.assignment)
    try:
        gradebook.write_result(url or gradebook.db_url(root), result, timestamp=timestamp)
    except gradebook.InvalidResult as exc:   # scores that do not fit the assignment: 0 with the reason
        result = HandinResult.failure(result.student, result.assignment, f"invalid grading result: {exc}"[:300],
                                      result.max_scores, log=result.log)
        gradebook.write_result(url or gradebook.db_url(root), result, timestamp=timestamp)
    _write_autograded(root, result)
    status[f"{result.student}/{result.assignment}"] = status_entry(result, seconds, notes)
    course.write_status(root, status)
    log_dir = os.path.join(root, course.STATE_DIR, "logs")
    os.makedirs(log_dir, exist_ok=True)
    log = result.log + "".join(f"\nlossgrader: kept within the caps: {note}" for note in notes)
    with open(os.path.join(log_dir, f"{result.student}__{result.assignment}.log"), "w", encoding="utf-8") as fh:
        fh.write(log)
