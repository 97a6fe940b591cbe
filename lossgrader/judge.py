"""The trusted judge: turns what the runtime reported about a student's code into verdicts.

Everything here reads plain data (the runtime's responses: statuses, descriptions of the
returned objects, tensors on the CPU) and never calls student code, so it gives the same
verdict whether the student's code ran in this process (``check`` in a notebook) or in a
sandbox (autograding). The exercises (``lossgrader.exercises``) use these checks in the
order that gives the most useful message first.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Optional

import torch

from .runtime import device_name

from .guards import GAPS, GAP_CHILD, GAP_FORK, GAP_THREAD, single_thread

class CaseFailure(Exception):
    def __init__(self, status: str, message: str, hint: Optional[str] = None, fallback: Optional[str] = None):
        super().__init__(message)
        self.status = status      # "fail", "error", "notimpl", "timeout", "forbidden"
        self.message = message
        self.hint = hint
        self.fallback = fallback  # shown when no typical mistake explains the failure


@dataclass
class CaseResult:
    name: str
    inputs: str
    status: str                   # "pass" or a CaseFailure status, or "skipped"
    message: str = ""
    hint: Optional[str] = None
    group: Optional[str] = None   # scoring group (lossgrader.engine.score): None, a group of its own

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def scoring_groups(results) -> tuple:
    """(groups whose cases all passed, groups): the score is points × the first / the second.
    Every group has the same weight; a result without a group is a group of its own."""
    groups = {}
    for k, r in enumerate(results):
        key = r.group if getattr(r, "group", None) is not None else ("case", k)
        groups[key] = groups.get(key, True) and r.passed
    return sum(groups.values()), len(groups)


@dataclass(frozen=True)
class Tolerance:
    """An element passes when |got − expected| <= rtol·|expected| + atol·scale, where scale is
    max(1, |expected|) for a scalar and max|expected| (1 when all are 0) for a tensor, so
    that atol is relative to the largest element of a gradient, not an absolute 1."""
    rtol: float
    atol: float
    reason: str = ""

    def loosened(self, factor: float) -> "Tolerance":
        return Tolerance(self.rtol * factor, self.atol * factor, self.reason)


# The one tolerance policy (docs/grader.md, "Tolerance policy"). It is set by what correct
# code legitimately does, not by machine precision: a stabilising constant up to ~1e-6
# (union + 1e-6, one_hot + 1e-6, p.clamp(1e-7, 1 - 1e-7) away from 0 and 1, pairwise
# distance's eps), accumulating in float64, softplus / logsigmoid / logsumexp forms,
# torch.where vs clamp. Such code changes a value or a gradient by up to a few 1e-6
# relative; the typical mistakes change it by 1e-2 or more (tests/test_tolerances.py
# checks both sides, and that loosening this table 10× lets a near miss through).
TOLERANCES = {
    torch.float16: Tolerance(1e-2, 1e-3, "half precision"),
    torch.bfloat16: Tolerance(2e-2, 1e-2, "bfloat16 keeps 8 bits of mantissa"),
    torch.float32: Tolerance(1e-4, 1e-5, "float32 rounding of sums and large logits, plus eps up to 1e-6"),
    torch.float64: Tolerance(1e-5, 1e-5, "eps up to 1e-6 in a denominator, a one-hot, a clamp or a distance (F.pairwise_distance)"),
}

# The table is a floor, not the only bar: every case's reference is also evaluated in float64
# (``Exercise.expect``'s ``precise``), and a result also passes where it is at least as close to
# that as the reference is, times REFERENCE_ERROR_FACTOR, element by element. Where the
# reference's own float32 rounding error exceeds the table (numerical_grad's float32 case: f
# evaluated in float32, then divided by 2ε) an implementation more precise than the reference
# (float64 inside) would otherwise fail, and only bit-identical arithmetic would pass. The
# factor leaves room for a correct float32 implementation whose rounding differs from the
# reference's; tests/test_tolerances.py checks float64-inside implementations pass every float32
# case and that this factor loosened 10x lets an implementation 3x too far from float64 through.
REFERENCE_ERROR_FACTOR = 4.0

# A failure whose largest error is at most NEAR_FACTOR times the allowed one is reported as
# "very close": the two numbers are printed with enough digits to differ, and the hint asks
# whether an epsilon was added.
NEAR_FACTOR = 20.0

EPSILON_HINT = ("你的结果与参考值只差一点点：是否在分母、log 或 one-hot 中加了一个较大的小常数 ε"
                "（例如 1e-3、1e-4），或者用 clamp 截断了概率？本课程接受 1e-6 量级的 ε；"
                "请把 ε 减小到 1e-6 或去掉它，并按课程公式计算。")


def tolerance_for(dtype, override=None) -> Tolerance:
    """The tolerance for ``dtype``: the exercise's override (a Tolerance, a per-dtype dict
    of them, or an (rtol, atol) pair) or else the table."""
    if isinstance(override, dict):
        override = override.get(dtype)
    if isinstance(override, Tolerance):
        return override
    if isinstance(override, tuple):
        return Tolerance(*override)
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


OTHER_GRADIENT_HINT = ("损失值在这个用例上与参考值一致，但梯度不同：要么你的公式与课程的公式是不同的函数、只在这些输入上数值接近，"
                       "要么计算中有一段被 .detach() / .data 切断或用了不可导的运算（round、argmax）。")

NOT_A_LOSS_HINT = "检查是否在计算中用了 .detach()、.item()、.data 或不可导的运算（如 round、argmax）。"


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- errors
def describe_error(error: dict) -> str:
    """The Chinese sentence for an exception raised by student code (escaped: it quotes the
    student's own message and source line)."""
    text = f"{error.get('type', '')}: {error.get('message', '')}".strip()
    if len(text) > 400:
        text = text[:400] + " …"
    text = html.escape(text, quote=False)
    line, source = error.get("line"), html.escape(str(error.get("source") or ""), quote=False)
    if line and source:
        return f"你的代码抛出了异常 {text}（第 {line} 行：<code>{source}</code>）"
    if line:
        return f"你的代码抛出了异常 {text}（第 {line} 行）"
    return f"你的代码抛出了异常 {text}"


def exception_hint(message: str, exercise=None) -> Optional[str]:
    for needle, hint in getattr(exercise, "error_hints", ()):
        if needle in message:
            return hint
    if "_parameters" in message or "before Module.__init__() call" in message:
        return "nn.Module 的子类必须在 __init__ 的第一行调用 super().__init__()。"
    if "view size is not compatible" in message:
        return "输入张量不连续（例如转置后的张量）时 .view() 会失败：请改用 .reshape()。"
    if "leaf Variable that requires grad" in message or "a view of a leaf Variable" in message:
        return "不要原地修改需要梯度的输入（如 pred -= target 或 x[i] = …）：先 .clone() 再修改，或用非原地运算。"
    if "Expected all tensors to be on the same device" in message:
        return "所有张量必须在同一设备上：新建的张量请用 device=x.device，或对已有张量调用 .to(x.device)。"
    if "expected scalar type" in message or "dtype" in message.lower() and "expected" in message.lower():
        return "张量的数据类型不一致：新建张量时请用 dtype=x.dtype（或 torch.zeros_like 等 *_like 函数）。"
    return None


def check_call(record: dict, exercise) -> None:
    """Raise the CaseFailure a call of student code deserves (see runtime.call)."""
    status = record.get("status")
    if status == "ok":
        return
    if status == "budget":
        raise CaseFailure("timeout", "时间已用尽，此用例未运行。")
    if status == "timeout":
        raise CaseFailure("timeout", f"运行超时：本练习的时间限制为 {exercise.time_limit:g} 秒，"
                          "你的代码可能陷入了死循环或过慢。",
                          "检查循环的终止条件；尽量使用向量化的张量运算而不是 Python 循环。")
    error = record.get("error") or {}
    if status == "exit":
        raise CaseFailure("error", f"你的代码调用了 {html.escape(str(error.get('message', 'exit')))}() 试图结束程序。",
                          "函数应当返回结果，而不是退出解释器。")
    if status == "notimpl":
        raise CaseFailure("notimpl", "尚未实现：函数抛出了 NotImplementedError。",
                          "删除 raise NotImplementedError() 并写出你的实现。")
    if status == "reference":
        raise CaseFailure("forbidden", f"不允许调用 lossgrader 的参考实现（{html.escape(str(error.get('message', '')))}）：请自己实现。")
    if status == "raised":
        raise CaseFailure("error", describe_error(error), exception_hint(str(error.get("message", "")), exercise))
    raise CaseFailure("error", "评分器无法读取你的代码的运行结果。")


def check_forbidden(calls, rules) -> None:
    """Raise the "forbidden" failure for the first reported call a rule matches (by name and,
    for a conditional rule, by its argument bound by name or position)."""
    for entry in calls or ():
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            continue
        name, arguments = entry
        for rule in rules:
            if rule.matches(name, arguments):
                seen = html.escape(str(name))
                if rule.arg is not None and isinstance(arguments, dict):
                    seen += f"，{html.escape(rule.arg)}={html.escape(repr(arguments.get(rule.arg)))}"
                observed = f"（评分时观察到：<code>{seen}</code>）"
                if rule.message:
                    raise CaseFailure("forbidden", rule.message + observed)
                raise CaseFailure("forbidden", f"本练习要求你自己实现，不允许调用 <code>{rule.name}</code>{observed}。",
                                  "只用基本的张量运算（加减乘除、exp、log、sum、mean 等）实现公式。")


# ----------------------------------------------------------------------------- observation gaps
# What the runtime could not watch (lossgrader.guards.GAPS): the verdict cannot rest on its
# spies alone, so the test cell goes to a person (English: the instructor reads it).
GAP_REASONS = {
    GAP_THREAD: "a thread that the grader's spies do not follow (not started through `threading` while "
                "grading, or a C-level thread running Python) was alive while the function was checked",
    GAP_FORK: "the function started a process while it was checked (what ran there was not observed)",
    GAP_CHILD: "a process started by the hand-in was alive while the function was checked",
}
GAP_ZH = {GAP_THREAD: "评分时有评分器无法跟踪的线程在运行", GAP_FORK: "评分时你的代码启动了子进程",
          GAP_CHILD: "评分时有你的代码启动的子进程在运行"}


def observation_gaps(responses, limit: int = 10_000) -> list:
    """The GAP_* signals anywhere in the runtime's responses (every case, every module run),
    in a fixed order; a bounded walk over plain data."""
    found, stack, steps = set(), [responses], 0
    while stack and steps < limit:
        steps += 1
        node = stack.pop()
        if isinstance(node, dict):
            calls = node.get("calls")
            if isinstance(calls, list):
                found.update(c[0] for c in calls if isinstance(c, (list, tuple)) and c and c[0] in GAPS)
            stack.extend(v for k, v in node.items() if k in ("runs",) and isinstance(v, list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return [g for g in GAPS if g in found]


def review_note(reasons_zh, auto_score: float, points: float) -> str:
    """The Chinese note a flagged test cell's feedback starts with (HTML): why a person
    grades it, and the automatic score that person confirms or changes."""
    items = "".join(f"<li>{r}</li>" for r in reasons_zh)
    return ("<div class=\"lossgrader-review\"><p><b>本单元等待老师人工复核。</b>"
            "评分器无法仅凭自动检查确定你的代码没有绕过本练习的规则，原因如下：</p>"
            f"<ul>{items}</ul>"
            f"<p>自动评分为 <b>{auto_score:g} / {points:g}</b> 分（见下方的详细结果）。"
            "老师确认之前，本单元暂记 0 分；确认后以老师给出的分数为准。</p></div>")


# ----------------------------------------------------------------------------- values
class Mismatch(str):
    """compare()'s description of a difference: a Chinese sentence (a str, so it can be
    put in a message as is) that also carries what the diagnosis needs."""
    ratio: float = float("inf")     # largest error / allowed error over the failing elements
    bad = None                      # bool mask of the failing elements
    got = None                      # float64 CPU copies
    expected = None

    @property
    def near(self) -> bool:
        return self.ratio <= NEAR_FACTOR


def _unravel(flat: int, shape) -> tuple:
    """torch.unravel_index without its first-use import of sympy (about a second)."""
    idx = []
    for size in reversed(tuple(shape)):
        idx.append(flat % size)
        flat //= size
    return tuple(reversed(idx))


def _digits(a: float, b: float) -> int:
    """Significant digits that show a and b as different numbers (6 at least, 17 at most)."""
    for n in range(6, 18):
        if f"{a:.{n}g}" != f"{b:.{n}g}":
            return n
    return 17


def compare(got: torch.Tensor, expected: torch.Tensor, dtype, tol=None, subgrad=None, precise=None):
    """None when close enough, otherwise a Mismatch: the Chinese description of the
    difference. NaN and Inf never count as close.

    ``precise``: the same reference evaluated in higher precision (a tensor, or a callable
    returning one or None, asked only when the table's bar is not met): an element also passes
    when |got − precise| <= REFERENCE_ERROR_FACTOR·|expected − precise| (the reference's own
    error, times the factor), whichever bar is looser."""
    t = tolerance_for(dtype, tol)
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if g.shape != e.shape:
        return Mismatch(f"形状不对：应为 {tuple(e.shape)}，你的结果是 {tuple(g.shape)}")
    e_abs = e.abs()
    top = float(e_abs.max()) if e.numel() else 0.0
    scale = max(1.0, top) if e.dim() == 0 else (top if top > 0 else 1.0)
    diff = (g - e).abs()
    allowed = t.atol * scale + t.rtol * e_abs
    ok = diff <= allowed          # False wherever g is NaN or Inf
    if subgrad is not None:
        slack = t.atol * scale
        in_range = (g >= subgrad.lo - slack - t.rtol * subgrad.lo.abs()) & (g <= subgrad.hi + slack + t.rtol * subgrad.hi.abs())
        ok = torch.where(subgrad.mask, in_range, ok)
    if bool(ok.all()):
        return None
    p = precise() if callable(precise) else precise
    if isinstance(p, torch.Tensor) and p.shape == e.shape:
        p = p.detach().to("cpu", torch.float64)
        own = REFERENCE_ERROR_FACTOR * (e - p).abs()      # the reference's own error, times the factor
        ok = ok | ((g - p).abs() <= own)
        if bool(ok.all()):
            return None
        allowed = torch.maximum(allowed, own)
    bad = ~ok
    diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, float("inf")))
    ratio_all = torch.where(bad, diff / allowed.clamp(min=1e-300), torch.full_like(diff, -1.0))
    if subgrad is not None:   # outside the subgradient range: measured against the range, as "far"
        ratio_all = torch.where(subgrad.mask & bad, torch.full_like(diff, float("inf")), ratio_all)
    flat = int(torch.argmax(torch.where(bad, diff, torch.full_like(diff, -1.0))))
    idx = _unravel(flat, g.shape) if g.dim() else ()
    gv, ev = float(g.reshape(-1)[flat]), float(e.reshape(-1)[flat])
    rel = abs(gv - ev) / max(abs(ev), 1e-12)
    ratio = float(ratio_all.max())
    where = f"，位置 {idx}" if idx else ""
    count = f"（{int(bad.sum())}/{bad.numel()} 个元素不符）" if g.numel() > 1 else ""
    if ratio <= NEAR_FACTOR:
        n = _digits(ev, gv)
        text = (f"非常接近但超出了容差：期望 {ev:.{n}g}，得到 {gv:.{n}g}{where}；相对误差 {rel:.2g}，"
                f"是允许误差的 {ratio:.3g} 倍（{dtype_name(dtype)} 的容差：相对 {t.rtol:g}）{count}")
    else:
        n = _digits(ev, gv)
        text = (f"期望 {ev:.{n}g}，得到 {gv:.{n}g}{where}；最大绝对误差 {float(diff.max()):.3g}，"
                f"相对误差 {rel:.3g}{count}")
    m = Mismatch(text)
    m.ratio, m.bad, m.got, m.expected = ratio, bad, g, e
    return m


# ----------------------------------------------------------------------------- gradients
def _factor_name(c: float, shape) -> Optional[tuple]:
    """(what the factor c means, hint) when a wrong gradient is c × the right one."""
    numel = 1
    for s in shape:
        numel *= int(s)
    n0 = int(shape[0]) if len(shape) else 1

    def near(x):
        return abs(c - x) <= 1e-3 * max(abs(x), 1.0)
    if near(-1.0):
        return ("梯度的符号反了（正好是参考梯度的 −1 倍）",
                "检查公式中减法的顺序（ŷ − y 还是 y − ŷ）和前面的负号。")
    for count, what in ((numel, "元素个数 n"), (n0, "样本数 N")):
        if count > 2 and near(float(count)):
            return (f"梯度正好是参考梯度的 {count} 倍（= {what}）",
                    f"你可能用了求和（sum）而不是平均（mean），或者梯度里缺少 1/{what[-1]}。")
        if count > 2 and near(1.0 / count):
            return (f"梯度正好是参考梯度的 1/{count}（{what}）",
                    f"你多除了一次{what}：平均只需要除一次。")
    if near(2.0):
        return ("梯度正好是参考梯度的 2 倍", "检查系数 2 与 1/2：例如 (ŷ − y)² 的导数是 2(ŷ − y)，0.5·r² 的导数是 r。")
    if near(0.5):
        return ("梯度正好是参考梯度的 1/2", "检查系数 2 与 1/2：是否多乘了 0.5 或少乘了 2？")
    return (f"梯度正好是参考梯度的 {c:.4g} 倍（相差一个常数因子）",
            "值正确而梯度差一个常数倍：检查缩放是否放在了 .detach() 的量里，或者手写的梯度少了某个常数。")


def gradient_cause(mismatch, case=None, what="梯度", subgrad=None) -> tuple:
    """(sentence, hint) naming the cause of a wrong gradient from the way it differs:
    NaN at a point, all zeros (cut off from the graph), a near miss (an epsilon), a constant
    factor (sum vs mean, 1/n, 2, sign), only at non-differentiable points, or other."""
    if not isinstance(mismatch, Mismatch) or mismatch.got is None:
        return "", NOT_A_LOSS_HINT
    g, e, bad = mismatch.got, mismatch.expected, mismatch.bad
    finite = torch.isfinite(g)
    if not bool(finite.all()):
        flat = int(torch.nonzero(~finite.reshape(-1))[0])
        idx = _unravel(flat, g.shape) if g.dim() else ()
        where = f"在位置 {idx}" if idx else ""
        return (f"{what}{where}为 {float(g.reshape(-1)[flat])}（共 {int((~finite).sum())} 个元素不是有限数）",
                nonfinite_failure(case, what).hint if case is not None else "检查除以 0、log(0)、sqrt 在 0 处等情况。")
    if bool((g == 0).all()) and bool((e != 0).any()):
        return (f"{what}全为 0：梯度没有流过你的计算",
                "某处切断了计算图：.detach()、.item()、.data、torch.tensor(...) 重新包装，或者在 NumPy 中计算。"
                "请全程使用 torch 运算。")
    if mismatch.near:
        return ("误差非常小", EPSILON_HINT)
    top = float(e.abs().max()) if e.numel() else 0.0
    big = e.abs() > 1e-3 * top if top > 0 else torch.zeros_like(bad)
    if big.any():
        r = (g[big] / e[big])
        c = float(r.median())
        if c != 0 and bool(((r - c).abs() <= 1e-3 * abs(c)).all()) and bool((g[~big].abs() <= 1e-3 * top * max(abs(c), 1)).all()):
            named = _factor_name(c, g.shape)
            if named:
                return named
    n_bad, n = int(bad.sum()), bad.numel()
    if subgrad is not None and subgrad.mask.shape == bad.shape and not bool((bad & ~subgrad.mask).any()):
        return (f"只在不可导点上不对（{n_bad}/{n} 个元素）",
                "在不可导点（残差为 0、两点重合等）上，你的次梯度超出了有效范围：例如 |r| 在 0 处的导数可取 [−1, 1] "
                "中的任意值（torch.sign 取 0，torch.where 取 ±1 都可以），但不能更大。")
    if n > 1 and n_bad <= max(1, n // 4):
        if case is not None and "edge" in getattr(case, "tags", ()):
            return (f"只在个别元素上不对（{n_bad}/{n}），本用例含不可导点",
                    "在不可导点（残差为 0、|r| = δ、两点重合、hinge 的拐点）处应取有效的次梯度；"
                    "torch.where 与 clamp 在拐点的取值不同都可以，但不能是 0/0 或任意值。")
        return (f"只在个别元素上不对（{n_bad}/{n}）",
                "只有少数元素不对：检查分段函数的条件（< 还是 <=）和拐点处的取值；如果在概率或分母上加了 ε，"
                "它在概率或分母很小的位置影响最大。")
    return "", OTHER_GRADIENT_HINT


def check_tensor_result(out: dict, like_shape, dtype, device, what="返回值") -> torch.Tensor:
    """The returned tensor's value (CPU) when ``out`` describes a tensor of the expected
    shape, dtype and device; raises the failure otherwise."""
    kind = out.get("type")
    if kind == "unreadable":
        raise CaseFailure("fail", f"{what}（{html.escape(str(out.get('typename', '?')))}）无法读取："
                          f"{html.escape(str(out.get('message', '')), quote=False)}",
                          "返回输入所在设备上的普通 torch.Tensor：不要返回 meta 张量、稀疏张量或自定义的张量子类。")
    if kind == "none":
        raise CaseFailure("notimpl", f"尚未实现：{what}是 None（函数没有 return，或函数体只有 ... / pass）。",
                          "记得用 return 返回结果。")
    if kind != "tensor":
        hint = None
        if kind == "number":
            hint = "不要用 .item() 或 float() 把结果变成 Python 数：那样会切断计算图，梯度无法回传。"
        elif kind == "numpy":
            hint = "不要在 NumPy 中计算：转换到 NumPy 再转回来会切断计算图。请全程使用 torch 运算。"
        typename = html.escape(str(out.get("typename", "?")))
        raise CaseFailure("fail", f"{what}的类型是 {typename}，应为 torch.Tensor。", hint)
    value = out.get("value")
    if not isinstance(value, torch.Tensor):
        raise CaseFailure("error", "评分器无法读取你的代码的运行结果。")
    shape = tuple(out.get("shape", ()))
    if shape != tuple(like_shape) or tuple(value.shape) != shape:
        expect = "标量（0 维张量，形状 ()）" if len(like_shape) == 0 else f"形状 {tuple(like_shape)}"
        hint = None
        if len(like_shape) == 0:
            hint = "对逐元素损失取平均（.mean()）得到 0 维张量；不要 keepdim=True，也不要 .view(1) / .reshape(1)。"
        raise CaseFailure("fail", f"{what}的形状是 {shape}，应为{expect}。", hint)
    if out.get("dtype") != dtype_name(dtype) or value.dtype != dtype:
        raise CaseFailure("fail", f"{what}的数据类型是 {html.escape(str(out.get('dtype')))}，应与输入相同：{dtype_name(dtype)}。",
                          "新建张量时使用 dtype=输入.dtype（或 torch.zeros_like 等），不要写死 float32/float64。")
    if out.get("device") != device_name(device):
        raise CaseFailure("fail", f"{what}在设备 {html.escape(str(out.get('device')))} 上，应与输入相同：{device}。",
                          "不要调用 .cpu() / .cuda()；新建张量时使用 device=输入.device。")
    return value


def check_unchanged(mutated) -> None:
    for i in mutated or ():
        raise CaseFailure("fail", f"你的代码原地修改了第 {int(i) + 1} 个输入张量。",
                          "损失函数不应改变它的输入：使用非原地运算（a = a - b，而不是 a -= b），或先 .clone()。")


def nonfinite_failure(case, what="返回值", calls=()) -> CaseFailure:
    if "prob01" in case.tags:
        return CaseFailure("fail", f"{what}含有 NaN 或 Inf：概率恰为 0 或 1 时 log(0) = −∞，而 0·(−∞) = NaN。",
                           "像 PyTorch 一样把每个 log 截断在 −100：torch.clamp(torch.log(p), min=-100)，"
                           "对 log(1 − p) 也一样。")
    subtracted_max = any(("max" in str(c[0]).rsplit(".", 1)[-1] and "softmax" not in str(c[0])) for c in calls or ()
                         if isinstance(c, (list, tuple)) and c)
    if "large" in case.tags and subtracted_max:
        return CaseFailure("fail", f"{what}含有 NaN 或 Inf：数值不稳定（本用例的 logits 很大）。",
                           "你已经减去了最大值，但之后先算 softmax 再取 log：其他类别的概率下溢为 0，log(0) = −∞。"
                           "请直接在对数空间计算 log_softmax(x) = (x − max) − log Σ exp(x − max)，不要写 log(softmax(x))。")
    if "large" in case.tags:
        return CaseFailure("fail", f"{what}含有 NaN 或 Inf：数值不稳定（本用例的输入数值很大或概率接近 0/1）。",
                           "对大 logits 直接求 exp 会溢出：使用 log-sum-exp 技巧（先减去最大值），或 log1p(exp(-|x|)) 这样的稳定形式；"
                           "也不要先算 softmax / sigmoid 再取 log（概率会下溢为 0），直接在对数空间计算。")
    if "edge" in case.tags:
        return CaseFailure("fail", f"{what}含有 NaN 或 Inf（本用例处于不可导点，例如两点重合、残差为 0）。",
                           "在不可导点应返回一个有效的次梯度，而不是 NaN：例如距离用 torch.linalg.vector_norm / .norm()，"
                           "不要手写 sqrt(平方和)（sqrt 在 0 处导数无穷大）。")
    return CaseFailure("fail", f"{what}含有 NaN 或 Inf。", "检查除以 0、log(0)、sqrt 在 0 处等情况。")


# ----------------------------------------------------------------------------- cases
def judge_cases(exercise, cases, expectations, responses, device) -> list:
    # the judge's tensors are tiny: one thread (on a busy machine a parallel region costs
    # tens of milliseconds per operation, and the diagnosis runs hundreds of them)
    with single_thread():
        return _judge_cases(exercise, cases, expectations, responses, device)


def _judge_cases(exercise, cases, expectations, responses, device) -> list:
    """CaseResults for the runtime's responses, in case order. After a case that was not
    implemented, timed out or used a forbidden built-in, the rest are reported skipped.
    A failure without a hint of its own gets the hint of the typical mistake the student's
    results match on every case where that mistake differs from the reference
    (``exercise.diagnose_all``), or else the judge's guess at the cause."""
    results = []
    fallbacks = {}
    stop = None
    group_of = getattr(exercise, "group_of", lambda case: None)
    for k, (case, expected) in enumerate(zip(cases, expectations)):
        group = group_of(case)
        if stop is not None:
            results.append(CaseResult(case.name, case.describe_inputs(), "skipped", stop, group=group))
            continue
        response = responses[k] if k < len(responses) and isinstance(responses[k], dict) else None
        try:
            if response is None:
                raise CaseFailure("error", "评分器没有收到这个用例的运行结果（你的代码可能让评分进程退出了）。")
            exercise.judge(case, expected, response, device)
            results.append(CaseResult(case.name, case.describe_inputs(), "pass", group=group))
        except CaseFailure as failure:
            results.append(CaseResult(case.name, case.describe_inputs(), failure.status, failure.message, failure.hint,
                                      group=group))
            fallbacks[k] = failure.fallback
            if failure.status == "notimpl":
                stop = "尚未实现。"
            elif failure.status == "timeout":
                stop = "前一个用例超时，剩余用例未运行。"
            elif failure.status == "forbidden":
                stop = "使用了不允许的内置实现。"
        except Exception:  # a malformed response (forged or truncated): that case fails, nothing else
            results.append(CaseResult(case.name, case.describe_inputs(), "error",
                                      "评分器无法读取你的代码的运行结果。", group=group))
    unexplained = [k for k, r in enumerate(results) if r.status == "fail" and r.hint is None]
    if unexplained:
        try:
            hints = exercise.diagnose_all(cases, expectations, responses, unexplained)
        except Exception:   # a diagnosis never costs the student a verdict
            hints = {}
        for k in unexplained:
            results[k].hint = hints.get(k) or fallbacks.get(k)
    return results
