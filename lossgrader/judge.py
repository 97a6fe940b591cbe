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
    for name, kwargs in calls:
        for rule in rules:
            if rule.matches(name, kwargs):
                if rule.message:
                    raise CaseFailure("forbidden", rule.message)
                raise CaseFailure("forbidden", f"本练习要求你自己实现，不允许调用 <code>{rule.name}</code>。",
                                  "只用基本的张量运算（加减乘除、exp、log、sum、mean 等）实现公式。")


# ----------------------------------------------------------------------------- values
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


def check_tensor_result(out: dict, like_shape, dtype, device, what="返回值") -> torch.Tensor:
    """The returned tensor's value (CPU) when ``out`` describes a tensor of the expected
    shape, dtype and device; raises the failure otherwise."""
    kind = out.get("type")
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
    if out.get("device") != str(device):
        raise CaseFailure("fail", f"{what}在设备 {html.escape(str(out.get('device')))} 上，应与输入相同：{device}。",
                          "不要调用 .cpu() / .cuda()；新建张量时使用 device=输入.device。")
    return value


def check_unchanged(mutated) -> None:
    for i in mutated or ():
        raise CaseFailure("fail", f"你的代码原地修改了第 {int(i) + 1} 个输入张量。",
                          "损失函数不应改变它的输入：使用非原地运算（a = a - b，而不是 a -= b），或先 .clone()。")


def nonfinite_failure(case, what="返回值") -> CaseFailure:
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


# ----------------------------------------------------------------------------- cases
def judge_cases(exercise, cases, expectations, responses, device) -> list:
    """CaseResults for the runtime's responses, in case order. After a case that was not
    implemented, timed out or used a forbidden built-in, the rest are reported skipped."""
    results = []
    stop = None
    for k, (case, expected) in enumerate(zip(cases, expectations)):
        if stop is not None:
            results.append(CaseResult(case.name, case.describe_inputs(), "skipped", stop))
            continue
        response = responses[k] if k < len(responses) and isinstance(responses[k], dict) else None
        try:
            if response is None:
                raise CaseFailure("error", "评分器没有收到这个用例的运行结果（你的代码可能让评分进程退出了）。")
            exercise.judge(case, expected, response, device)
            results.append(CaseResult(case.name, case.describe_inputs(), "pass"))
        except CaseFailure as failure:
            hint = failure.hint
            if failure.status == "fail" and hint is None:
                hint = exercise.diagnose(case, response)
            results.append(CaseResult(case.name, case.describe_inputs(), failure.status, failure.message, hint))
            if failure.status == "notimpl":
                stop = "尚未实现。"
            elif failure.status == "timeout":
                stop = "前一个用例超时，剩余用例未运行。"
            elif failure.status == "forbidden":
                stop = "使用了不允许的内置实现。"
        except Exception:  # a malformed response (forged or truncated): that case fails, nothing else
            results.append(CaseResult(case.name, case.describe_inputs(), "error",
                                      "评分器无法读取你的代码的运行结果。"))
    return results
