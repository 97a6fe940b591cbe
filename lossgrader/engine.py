"""check(): runs a student's implementation on an exercise's cases and scores it.

Each case calls the student's code once inside the guards (time limit, captured
output, guarded exits, torch call spy), then compares the result's type, shape, dtype,
device and value with the reference, checks that the inputs were left unchanged, that
no forbidden built-in was called and, for losses, that autograd's gradients through
the student's code match the reference gradients.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from . import guards
from .cases import Case
from .references import ReferenceUsed


class CaseFailure(Exception):
    def __init__(self, status: str, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.status = status      # "fail", "error", "notimpl", "timeout", "forbidden"
        self.message = message
        self.hint = hint


@dataclass
class CaseResult:
    name: str
    inputs: str
    status: str                   # "pass" or a CaseFailure status, or "skipped"
    message: str = ""
    hint: Optional[str] = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"


TOLERANCES = {  # dtype -> (rtol, atol relative to the expected values' scale)
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
    torch.float32: (1e-4, 1e-6),
    torch.float64: (1e-7, 1e-12),
}


def resolve_device(device=None) -> torch.device:
    if device is None:
        device = os.environ.get("LOSSGRADER_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Context:
    """What one check carries from case to case."""

    def __init__(self, exercise, device, budget_s):
        self.exercise = exercise
        self.device = device
        self.deadline = time.perf_counter() + budget_s

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def describe_exception(exc: BaseException) -> str:
    where = guards.student_frame(exc)
    text = f"{type(exc).__name__}: {exc}".strip()
    if len(text) > 400:
        text = text[:400] + " …"
    if where:
        lineno, line = where
        if line:
            return f"你的代码抛出了异常 {text}（第 {lineno} 行：<code>{line}</code>）"
        return f"你的代码抛出了异常 {text}（第 {lineno} 行）"
    return f"你的代码抛出了异常 {text}"


def exception_hint(exc: BaseException, exercise=None) -> Optional[str]:
    msg = str(exc)
    for needle, hint in getattr(exercise, "error_hints", ()):
        if needle in msg:
            return hint
    if "_parameters" in msg or "before Module.__init__() call" in msg:
        return "nn.Module 的子类必须在 __init__ 的第一行调用 super().__init__()。"
    if "view size is not compatible" in msg:
        return "输入张量不连续（例如转置后的张量）时 .view() 会失败：请改用 .reshape()。"
    if "leaf Variable that requires grad" in msg or "a view of a leaf Variable" in msg:
        return "不要原地修改需要梯度的输入（如 pred -= target 或 x[i] = …）：先 .clone() 再修改，或用非原地运算。"
    if "Expected all tensors to be on the same device" in msg:
        return "所有张量必须在同一设备上：新建的张量请用 device=x.device，或对已有张量调用 .to(x.device)。"
    if "expected scalar type" in msg or "dtype" in msg.lower() and "expected" in msg.lower():
        return "张量的数据类型不一致：新建张量时请用 dtype=x.dtype（或 torch.zeros_like 等 *_like 函数）。"
    return None


def call_student(ctx: Context, thunk, spy: bool = True):
    """Run ``thunk()`` (which calls student code) with the remaining time budget.
    Returns (result, torch functions called) or raises CaseFailure."""
    remaining = ctx.remaining()
    if remaining <= 0:
        raise CaseFailure("timeout", "时间已用尽，此用例未运行。")
    # the spy costs a Python call per torch op: only when the exercise has rules to enforce
    spy = spy and bool(ctx.exercise.forbidden or ctx.exercise.required)
    recorder = guards.CallSpy() if spy else contextlib.nullcontext()
    try:
        with guards.time_limit(remaining):
            with guards.student_code(), recorder:
                result = thunk()
    except guards.StudentTimeout:
        raise CaseFailure("timeout", f"运行超时：本练习的时间限制为 {ctx.exercise.time_limit:g} 秒，"
                          "你的代码可能陷入了死循环或过慢。",
                          "检查循环的终止条件；尽量使用向量化的张量运算而不是 Python 循环。") from None
    except guards.StudentExit as exc:
        raise CaseFailure("error", f"你的代码调用了 {exc.how}() 试图结束程序。",
                          "函数应当返回结果，而不是退出解释器。") from None
    except NotImplementedError:
        raise CaseFailure("notimpl", "尚未实现：函数抛出了 NotImplementedError。",
                          "删除 raise NotImplementedError() 并写出你的实现。") from None
    except ReferenceUsed as exc:
        raise CaseFailure("forbidden", f"不允许调用 lossgrader 的参考实现（{exc}）：请自己实现。") from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # any failure of the student's code is feedback, not a crash
        raise CaseFailure("error", describe_exception(exc), exception_hint(exc, ctx.exercise)) from None
    return result, (recorder.calls if spy else [])


def check_forbidden(ctx: Context, calls) -> None:
    for func, kwargs in calls:
        for rule in ctx.exercise.forbidden:
            if rule.matches(func, kwargs):
                if rule.message:
                    raise CaseFailure("forbidden", rule.message)
                raise CaseFailure("forbidden", f"本练习要求你自己实现，不允许调用 <code>{rule.name}</code>。",
                                  "只用基本的张量运算（加减乘除、exp、log、sum、mean 等）实现公式。")


def compare(got: torch.Tensor, expected: torch.Tensor, dtype, tol=None, subgrad=None):
    """None when close enough, otherwise a Chinese description of the difference.
    NaN and Inf never count as close."""
    rtol, atol = tol or TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if g.shape != e.shape:
        return f"形状不对：应为 {tuple(e.shape)}，你的结果是 {tuple(g.shape)}"
    e_abs = e.abs()
    scale = max(1.0, float(e_abs.max())) if e.numel() else 1.0
    diff = (g - e).abs()
    ok = diff <= atol * scale + rtol * e_abs          # False wherever g is NaN or Inf
    if subgrad is not None:
        slack = atol * scale
        in_range = (g >= subgrad.lo - slack - rtol * subgrad.lo.abs()) & (g <= subgrad.hi + slack + rtol * subgrad.hi.abs())
        ok = torch.where(subgrad.mask, in_range, ok)
    if bool(ok.all()):
        return None
    bad = ~ok
    diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, float("inf")))
    flat = int(torch.argmax(torch.where(bad, diff, torch.full_like(diff, -1.0))))
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), g.shape)) if g.dim() else ()
    gv, ev = float(g.reshape(-1)[flat]), float(e.reshape(-1)[flat])
    rel = abs(gv - ev) / max(abs(ev), 1e-12)
    where = f"，位置 {idx}" if idx else ""
    count = f"（{int(bad.sum())}/{bad.numel()} 个元素不符）" if g.numel() > 1 else ""
    return (f"期望 {ev:.6g}，得到 {gv:.6g}{where}；最大绝对误差 {float(diff.max()):.3g}，"
            f"相对误差 {rel:.3g}{count}")


def check_tensor_result(out, like_shape, dtype, device, what="返回值") -> None:
    if out is None:
        raise CaseFailure("notimpl", f"尚未实现：{what}是 None（函数没有 return，或函数体只有 ... / pass）。",
                          "记得用 return 返回结果。")
    if not isinstance(out, torch.Tensor):
        hint = None
        if isinstance(out, (float, int)):
            hint = "不要用 .item() 或 float() 把结果变成 Python 数：那样会切断计算图，梯度无法回传。"
        elif type(out).__module__.startswith("numpy"):
            hint = "不要在 NumPy 中计算：转换到 NumPy 再转回来会切断计算图。请全程使用 torch 运算。"
        raise CaseFailure("fail", f"{what}的类型是 {type(out).__name__}，应为 torch.Tensor。", hint)
    if tuple(out.shape) != tuple(like_shape):
        shape = "标量（0 维张量，形状 ()）" if len(like_shape) == 0 else f"形状 {tuple(like_shape)}"
        hint = None
        if len(like_shape) == 0:
            hint = "对逐元素损失取平均（.mean()）得到 0 维张量；不要 keepdim=True，也不要 .view(1) / .reshape(1)。"
        raise CaseFailure("fail", f"{what}的形状是 {tuple(out.shape)}，应为{shape}。", hint)
    if out.dtype != dtype:
        raise CaseFailure("fail", f"{what}的数据类型是 {_dtype_name(out.dtype)}，应与输入相同：{_dtype_name(dtype)}。",
                          "新建张量时使用 dtype=输入.dtype（或 torch.zeros_like 等），不要写死 float32/float64。")
    if out.device != device:
        raise CaseFailure("fail", f"{what}在设备 {out.device} 上，应与输入相同：{device}。",
                          "不要调用 .cpu() / .cuda()；新建张量时使用 device=输入.device。")


def check_unchanged(case_args, args) -> None:
    for i, (orig, now) in enumerate(zip(case_args, args)):
        if isinstance(orig, torch.Tensor) and isinstance(now, torch.Tensor):
            if not torch.equal(orig, now.detach().to("cpu")):
                raise CaseFailure("fail", f"你的代码原地修改了第 {i + 1} 个输入张量。",
                                  "损失函数不应改变它的输入：使用非原地运算（a = a - b，而不是 a -= b），或先 .clone()。")


def nonfinite_failure(case: Case, what="返回值") -> CaseFailure:
    if "prob01" in case.tags:
        return CaseFailure("fail", f"{what}含有 NaN 或 Inf：概率恰为 0 或 1 时 log(0) = −∞，而 0·(−∞) = NaN。",
                           "像 PyTorch 一样把每个 log 截断在 −100：torch.clamp(torch.log(p), min=-100)，"
                           "对 log(1 − p) 也一样。")
    if "large" in case.tags:
        return CaseFailure("fail", f"{what}含有 NaN 或 Inf：数值不稳定（本用例的输入数值很大或概率接近 0/1）。",
                           "对大 logits 直接求 exp 会溢出：使用 log-sum-exp 技巧（先减去最大值），或 log1p(exp(-|x|)) 这样的稳定形式。")
    if "edge" in case.tags:
        return CaseFailure("fail", f"{what}含有 NaN 或 Inf（本用例处于不可导点，例如两点重合、残差为 0）。",
                           "在不可导点应返回一个有效的次梯度，而不是 NaN：例如距离用 torch.linalg.vector_norm / .norm()，"
                           "不要手写 sqrt(平方和)（sqrt 在 0 处导数无穷大）。")
    return CaseFailure("fail", f"{what}含有 NaN 或 Inf。", "检查除以 0、log(0)、sqrt 在 0 处等情况。")


def run_cases(ctx: Context, solution, cases, expectations) -> list:
    results = []
    stop = None
    for case, expected in zip(cases, expectations):
        if stop is not None:
            results.append(CaseResult(case.name, case.describe_inputs(), "skipped", stop))
            continue
        try:
            ctx.exercise.run_case(ctx, solution, case, expected)
            results.append(CaseResult(case.name, case.describe_inputs(), "pass"))
        except CaseFailure as failure:
            hint = failure.hint
            if failure.status == "fail" and hint is None:
                hint = ctx.exercise.diagnose(ctx, solution, case)
            results.append(CaseResult(case.name, case.describe_inputs(), failure.status, failure.message, hint))
            if failure.status == "notimpl":
                stop = "尚未实现。"
            elif failure.status == "timeout":
                stop = "前一个用例超时，剩余用例未运行。"
            elif failure.status == "forbidden":
                stop = "使用了不允许的内置实现。"
    return results


_PACKAGE = None


def _package():
    """The registry and Report class this engine was loaded with. Kept once imported:
    a hidden test cell may drop lossgrader from sys.modules and import it afresh, and a
    check function bound before that must not mix its classes with the new modules'."""
    global _PACKAGE
    if _PACKAGE is None:
        from .exercises import EXERCISES
        from .report import Report
        _PACKAGE = (EXERCISES, Report)
    return _PACKAGE


def check(exercise: str, solution, *, points: float = 1.0, device=None, seed=None, hidden: bool = False):
    """Grade ``solution`` on ``exercise``; see the package docstring for the contract."""
    EXERCISES, Report = _package()
    if exercise not in EXERCISES:
        raise ValueError(f"未知的练习 {exercise!r}。可用的练习：{', '.join(EXERCISES)}")
    ex = EXERCISES[exercise]
    device = resolve_device(device)
    if points < 0:
        raise ValueError("points must be non-negative")
    started = time.perf_counter()
    ctx = Context(ex, device, ex.time_limit * (3 if hidden else 1))
    with guards.single_thread(), guards.capture_output() as captured, guards.guard_exits():
        problem = ex.validate_solution(solution)
        if problem is not None:
            results = [CaseResult("提交的对象", "", "notimpl" if solution is None else "fail", problem)]
        else:
            cases, expectations = ex.cases(seed, hidden)
            results = run_cases(ctx, solution, cases, expectations)
    plot = None
    if any(r.status == "fail" for r in results) and ex.curve is not None and problem is None:
        with guards.single_thread():
            plot = ex.curve.evaluate(solution, device)
    passed = sum(r.passed for r in results)
    score = round(points * passed / len(results), 4) if results else 0.0
    return Report(exercise=ex, points=points, score=score, results=results, captured=captured,
                  plot=plot, device=str(device), hidden=hidden, seconds=time.perf_counter() - started)
