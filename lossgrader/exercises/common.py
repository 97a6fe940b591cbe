"""What the exercise entries are made of: the kinds of exercise (how each is judged), the
forbidden-call rules and typical mistakes, the case factories, the mistake and library-variant
formulas. The entries themselves are in the chapter modules beside this one."""
from __future__ import annotations

import dataclasses
import functools
import html
import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import references as ref
from ..cases import Case, Rand, SubgradientRange
from ..judge import (BOOK_SECTIONS, EPSILON_HINT, CaseFailure, Hint, Tolerance, check_call, check_forbidden,
                     check_tensor_result, check_unchanged, compare, gradient_failure, graph_hint, nonfinite_failure)
from ..runtime import INPUT_FUNCTIONS, decode_arg, encode_arg, qualname
from ..plots import Curve


# The kernels the rules name. Per F function: the ATen operators behind it and the autograd
# nodes they leave. A kernel is reached by several entry points, all of them one rule: the F
# function (and the nn.Module that calls it), torch._C._nn.<op>, torch.<op> where torch has it,
# and torch.ops.aten.<op> (any overload); the runtime reports each by its genuine name, and the
# autograd node sees the kernel whatever Python route reached it (DisableTorchFunction).
KERNELS = {   # F function: (ATen operators, autograd nodes, nn modules that call it)
    "mse_loss": (("mse_loss",), ("MseLossBackward0",), ("MSELoss",)),
    "l1_loss": (("l1_loss",), (), ("L1Loss",)),
    "huber_loss": (("huber_loss",), ("HuberLossBackward0",), ("HuberLoss",)),
    "smooth_l1_loss": (("smooth_l1_loss",), ("SmoothL1LossBackward0",), ("SmoothL1Loss",)),
    "binary_cross_entropy": (("binary_cross_entropy",), ("BinaryCrossEntropyBackward0",), ("BCELoss",)),
    "binary_cross_entropy_with_logits": (("binary_cross_entropy_with_logits",),
                                         ("BinaryCrossEntropyWithLogitsBackward0",), ("BCEWithLogitsLoss",)),
    "nll_loss": (("nll_loss", "nll_loss_nd", "nll_loss2d"), ("NllLossBackward0", "NllLoss2DBackward0"),
                 ("NLLLoss", "NLLLoss2d")),
    "cross_entropy": (("cross_entropy_loss",), ("NllLossBackward0", "NllLoss2DBackward0"), ("CrossEntropyLoss",)),
    "triplet_margin_loss": (("triplet_margin_loss",), (), ("TripletMarginLoss",)),
    "triplet_margin_with_distance_loss": ((), (), ("TripletMarginWithDistanceLoss",)),
}
_NO_KERNEL = ((), (), ())

# Which F functions leave each autograd node: a rule may match a node only when every one of
# them is forbidden outright in the exercise (label_smoothing_ce allows plain F.cross_entropy,
# which leaves NllLossBackward0, so no rule of it matches that node).
NODE_PRODUCERS = {}
for _fname, (_ops, _nodes, _modules) in KERNELS.items():
    for _node in _nodes:
        NODE_PRODUCERS.setdefault("autograd." + _node, set()).add(_fname)


def _short(func) -> str:
    return getattr(func, "__name__", "") or ""


def _aten_schema_params(op: str, rename_self: bool):
    """[(name, kind)] of an ATen operator's default overload ("p": positional or keyword,
    "k": keyword only), or None."""
    packet = getattr(torch.ops.aten, op, None)
    overload = getattr(packet, "default", None) if packet is not None else None
    schema = getattr(overload, "_schema", None)
    if schema is None:
        return None
    return [("input" if (rename_self and a.name == "self") else a.name, "k" if a.kwarg_only else "p")
            for a in schema.arguments]


def entry_points(func, params: bool = True) -> dict:
    """{name the runtime reports: [(parameter, kind)] or None} for every entry point of the
    kernel behind ``func`` (an F function; any other callable is its own only entry point).
    ``params=False``: the names only (no signature is read: cheap on a check's first run)."""
    import inspect
    points = {}
    signature = None
    if params:
        try:
            signature = [(name, "k" if p.kind == p.KEYWORD_ONLY else "p")
                         for name, p in inspect.signature(func).parameters.items()
                         if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)]
        except (TypeError, ValueError):
            signature = None
    points[qualname(func)] = signature
    ops = KERNELS.get(_short(func), _NO_KERNEL)[0] if getattr(func, "__module__", "") == F.__name__ else ()
    for op in ops:
        for owner in (torch._C._nn, torch._C._VariableFunctions):
            builtin = getattr(owner, op, None)
            if builtin is not None:
                points[qualname(builtin)] = _aten_schema_params(op, rename_self=True) if params else None
        # the runtime names an ATen operator packet (or any of its overloads) "aten.<op>"
        points[f"aten.{op}"] = _aten_schema_params(op, rename_self=False) if params else None
    return points


def _set(value) -> bool:
    """The default condition of a conditional rule: the argument is given and not 0 / None /
    False (a tensor counts as given)."""
    return value is not None and value is not False and value != 0


@dataclass(frozen=True)
class Forbidden:
    """A built-in the exercise forbids: its functions in every entry point of their kernels,
    and where ``arg`` is set only when that argument, bound by name or position, satisfies
    ``when`` (default: given and not 0). ``nodes``: the autograd nodes the rule matches, set
    by the Exercise (``Exercise.resolve_nodes``): only nodes no allowed call leaves."""
    name: str                       # as shown to the student, e.g. "F.mse_loss"
    funcs: tuple
    arg: Optional[str] = None       # a conditional rule: the argument that makes a call forbidden
    when: Callable = _set           # predicate on that argument's value
    message: Optional[str] = None   # replaces the default "write it yourself" message
    nodes: frozenset = frozenset()

    @functools.cached_property
    def points(self) -> dict:
        """{entry point: its parameters} (the signatures are read here, for binding)."""
        out = {}
        for f in self.funcs:
            out.update(entry_points(f))
        return out

    @functools.cached_property
    def names(self) -> frozenset:
        """The names the runtime reports for these functions' entry points and, where the
        exercise resolved them, the autograd nodes."""
        names = set()
        for f in self.funcs:
            names.update(entry_points(f, params=False))
        return frozenset(names) | (self.nodes if self.arg is None else frozenset())

    def own_nodes(self) -> frozenset:
        """The autograd nodes these functions' kernels leave."""
        return frozenset("autograd." + n for f in self.funcs for n in KERNELS.get(_short(f), _NO_KERNEL)[1])

    def bind_spec(self) -> dict:
        """What the runtime needs to bind the conditional argument: {entry point: params}."""
        if self.arg is None:
            return {}
        return {name: params for name, params in self.points.items() if params}

    def matches(self, name, arguments) -> bool:
        if name not in self.names:
            return False
        if self.arg is None:
            return True
        if name.startswith("autograd."):
            return False
        arguments = arguments if isinstance(arguments, dict) else {}
        return self.arg in arguments and bool(self.when(arguments[self.arg]))

    def named_by(self, path: str) -> bool:
        """Whether a library path in the answer's source (``torch.nn.functional.mse_loss``,
        ``torch.nn.MSELoss``, ``torch._C._nn.mse_loss``) names one of these functions, an
        operator of its kernel or the nn module that calls it: only for rules without a
        condition (the function itself is forbidden)."""
        if self.arg is not None or not path.startswith("torch."):
            return False
        last = path.rsplit(".", 1)[-1]
        for f in self.funcs:
            short = _short(f)
            ops, _, modules = KERNELS.get(short, _NO_KERNEL)
            if short and last in (short,) + tuple(ops) + tuple(modules):
                return True
        return False


@dataclass(frozen=True)
class Mistake:
    """A typical wrong implementation and the hint shown when a student's results match it
    on every case where it differs from the reference (premise "mistake"); ``book``: the
    section of the book that explains it (default: the exercise's section)."""
    hint: str
    fn: Callable
    source: str = ""                # a library variant: whose convention it is
    book: Optional[str] = None

    def __post_init__(self):
        if self.book is not None and self.book not in BOOK_SECTIONS:
            raise ValueError(f"unknown book section {self.book!r}")


def Variant(name: str, source: str, expects: str, fn: Callable, book: Optional[str] = None) -> Mistake:
    """A convention a public library really uses that is not the course's formula: the
    student is told which function they wrote, whose convention it is and what the course
    expects instead (it is a different function, so it still loses the cases where it differs)."""
    return Mistake(f"你实现的是{name}（{source} 的约定），这是另一种损失；本课程的公式要求{expects}。", fn, source, book)


def resolve_nodes(rules) -> tuple:
    """The exercise's rules, each matching the autograd nodes of its kernels that only
    forbidden calls leave: a node that an allowed call (a function forbidden only with some
    argument, or not at all) also leaves is never matched."""
    rules = tuple(rules)
    outright = {_short(f) for r in rules if r.arg is None for f in r.funcs}
    resolved = []
    for r in rules:
        nodes = frozenset(n for n in r.own_nodes() if NODE_PRODUCERS.get(n, {None}) <= outright) if r.arg is None \
            else frozenset()
        resolved.append(dataclasses.replace(r, nodes=nodes))
    return tuple(resolved)


AUTOGRAD = Forbidden("自动求导（.backward() / torch.autograd.grad / torch.autograd.backward）",
                     (torch.Tensor.backward, torch.autograd.grad, torch.autograd.backward))


ONEHOT_HINT = Hint("exception-index-as-onehot",
                   "目标是类别索引，形状 (N, *)：先把它转成与 logits 同形状 (N, C, *) 的 one-hot，"
                   "例如 F.one_hot(target, C).movedim(-1, 1).to(probs.dtype)（原教程的 CombinedLoss 没有写明这一步：它只接受 "
                   "one-hot 目标）。", "exception", "book/04_other.html#reshape-view")
# An exception's message that means class indices were used as a one-hot target: (substring,
# the Chinese explanation, the hint) for Exercise(error_hints=...).
ONEHOT_ERROR = ("The size of tensor a", "形状 (N, *) 的类别下标与形状 (N, C, *) 的概率逐元素运算，形状对不上", ONEHOT_HINT)


class Expected(tuple):
    """The reference's (value, grads) for a case, and ``precise``: the same evaluated in
    float64 for a case in lower precision (None for a float64 case: nothing is more precise),
    computed the first time a comparison needs it (judge.compare, REFERENCE_ERROR_FACTOR)."""

    def __new__(cls, value, grads, precise=None):
        self = super().__new__(cls, (value, grads))
        self._precise = precise
        return self

    @property
    def precise(self):
        if callable(self._precise):
            try:
                self._precise = self._precise()
            except Exception:       # a reference that cannot run in float64: the table decides
                self._precise = None
        return self._precise

    def precise_value(self):
        return self.precise[0] if self.precise is not None else None

    def precise_grad(self, k):
        grads = self.precise[1] if self.precise is not None else ()
        return grads[k] if k < len(grads) else None


def _upcast(value):
    """A float tensor of lower precision as float64 (others unchanged)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.double()
    return value


class Exercise:
    """A loss function: graded on its value and on autograd's gradients through it."""
    kind = "loss"
    runtime_kind = "loss"       # how lossgrader.runtime calls the student's code

    graph = True                # the student's result carries an autograd graph (not numerical_grad)

    def __init__(self, id, title, func_name, signature, points, assignment, reference, make_cases, *,
                 forbidden=(), mistakes=(), variants=(), curve=None, tol=None, time_limit=10.0, required=None,
                 error_hints=(), book=None, epsilon_hint=EPSILON_HINT, graph=None):
        self.id = id
        self.title = title
        self.func_name = func_name
        self.signature = signature
        self.points = points
        self.assignment = assignment
        self.reference = reference
        self.make_cases = make_cases
        self.forbidden = resolve_nodes(forbidden)
        self.mistakes = tuple(mistakes) + tuple(variants)
        self.curve = curve
        # a per-exercise tolerance overrides judge.TOLERANCES only with a written reason
        if tol is not None and not (isinstance(tol, Tolerance) and tol.reason):
            raise ValueError(f"{id}: a tolerance override needs a Tolerance(rtol, atol, reason)")
        self.tol = tol
        self.time_limit = time_limit
        self.required = required
        self._required_names = None
        self.error_hints = tuple(error_hints)   # (substring of an exception message, explanation, Hint)
        if book is not None and book not in BOOK_SECTIONS:
            raise ValueError(f"{id}: unknown book section {book!r}")
        self.book = book                        # where the book explains this loss (a key of BOOK_SECTIONS)
        self.epsilon_hint = epsilon_hint        # the ε hint, or None where the formula has no place for an ε
        if graph is not None:
            self.graph = graph
        self._cache = {}

    def __repr__(self):
        return f"<Exercise {self.id}: {self.title} {self.func_name}{self.signature}, {self.points} 分>"

    # ----------------------------------------------------------- cases
    @staticmethod
    def group_of(case: Case) -> str:
        """The case's scoring group: its "group:" tag (every case factory sets one; see G)."""
        for tag in case.tags:
            if tag.startswith("group:"):
                return tag[len("group:"):]
        return case.name

    def default_seed(self) -> int:
        return zlib.crc32(self.id.encode()) % (2 ** 31)

    def cases(self, seed=None, hidden=False):
        """(cases, expectations), generated on the CPU and cached per (seed, hidden)."""
        key = (self.default_seed() if seed is None else int(seed), bool(hidden))
        if key not in self._cache:
            # hidden: the visible cases first, then a whole new set from another seed
            # with the hidden-only shapes, dtypes and edge cases
            cases = self.make_cases(Rand(key[0]), False)
            if key[1]:
                cases += [dataclasses.replace(c, name=f"{c.name}（隐藏用例）")
                          for c in self.make_cases(Rand(key[0] + 1), True)]
            self._cache[key] = (cases, [self.expect(c) for c in cases])
        return self._cache[key]

    def expect(self, case: Case):
        """Reference value and gradients (on the CPU), with the same in float64 on demand."""
        value, grads = self.evaluate_reference(case)
        precise = None
        if case.float_dtype() != torch.float64:
            precise = lambda: self.evaluate_reference(case, upcast=True)  # noqa: E731
        return Expected(value, grads, precise)

    def evaluate_reference(self, case: Case, upcast: bool = False):
        """(value, grads) of the reference on the case's inputs; ``upcast``: floating inputs
        in float64 first."""
        fn = getattr(self.reference, "__wrapped_reference__", self.reference)
        cast = _upcast if upcast else (lambda a: a)
        args = tuple(cast(a.detach().clone()).requires_grad_(i in case.grad_args and not case.value_only)
                     if isinstance(a, torch.Tensor) else a for i, a in enumerate(case.args))
        value = fn(*args, **{k: cast(v) for k, v in case.kwargs.items()})
        grads = ()
        if case.grad_args and not case.value_only:
            grads = torch.autograd.grad(value, [args[i] for i in case.grad_args])
        return value.detach(), tuple(g.detach() for g in grads)

    # ----------------------------------------------------------- what the runtime is sent
    def request(self, cases, device, hidden=False) -> dict:
        """The runtime's request: inputs only, never expected values (see lossgrader.runtime)."""
        request = {"kind": self.runtime_kind, "device": str(device), "time_limit": self.time_limit * (3 if hidden else 1),
                   "spy": bool(self.forbidden or self.required),
                   "cases": [self.request_case(c) for c in cases]}
        bind = {}
        for rule in self.forbidden:
            bind.update(rule.bind_spec())
        if bind:
            request["bind"] = {name: [list(p) for p in params] for name, params in bind.items()}
        return request

    def request_case(self, case: Case) -> dict:
        return {"args": [encode_arg(a) for a in case.args], "kwargs": dict(case.kwargs),
                "grad_args": list(case.grad_args), "value_only": bool(case.value_only)}

    # ----------------------------------------------------------- judging
    def validate_solution(self, solution) -> Optional[str]:
        if solution is None:
            return "尚未实现：传给 check 的是 None。"
        if not callable(solution):
            return f"传给 check 的应是函数 {self.func_name}，而不是 {type(solution).__name__}。"
        return None

    def judge(self, case, expected, response, device):
        """Raise a CaseFailure unless the response is a correct answer to the case."""
        self.judge_loss(case, expected, response, device)

    def judge_loss(self, case, expected, response, device, prefix=""):
        value, grads = expected
        check_call(response, self)
        check_forbidden(response.get("calls", ()), self.forbidden)
        self.check_required(response.get("calls", ()))
        dtype = case.float_dtype()
        got = check_tensor_result(response.get("out", {}), (), dtype, device, exercise=self)
        check_unchanged(response.get("mutated"))
        precise = getattr(expected, "precise_value", None)
        diff = compare(got, value, dtype, self.tol, precise=precise)
        if diff:
            if not bool(torch.isfinite(got).all()):
                raise nonfinite_failure(case, calls=response.get("calls", ()), exercise=self)
            raise CaseFailure("fail", f"{prefix}损失值不对：{diff}", evidence={"near": diff.near})
        if case.value_only or not case.grad_args:
            return
        if not response["out"].get("requires_grad"):
            raise CaseFailure("fail", f"{prefix}梯度无法回传：返回的张量不在计算图中（requires_grad=False）。",
                              graph_hint(response))
        check_call(response.get("grad_call", {"status": "missing"}), self)
        got_grads = response.get("grads") or []
        for k, (i, e) in enumerate(zip(case.grad_args, grads)):
            g = got_grads[k] if k < len(got_grads) else None
            if g is None:
                raise CaseFailure("fail", f"{prefix}梯度没有流回第 {i + 1} 个输入：它不在计算图中（或根本没有参与计算）。",
                                  graph_hint(response))
            precise = (lambda k=k: expected.precise_grad(k)) if isinstance(expected, Expected) else None
            diff = compare(g, e, dtype, self.tol, case.subgrad.get(i), precise)
            if diff:
                raise gradient_failure(diff, case, e.shape, prefix, f"对第 {i + 1} 个输入的梯度", self, response,
                                       "loss", case.subgrad.get(i))

    def check_required(self, calls):
        if self.required is None:
            return
        name, funcs = self.required
        wanted = self._required_names
        if wanted is None:
            wanted = self._required_names = Forbidden(name, funcs).names
        if not any(entry[0] in wanted for entry in calls if isinstance(entry, (list, tuple)) and entry):
            raise CaseFailure("fail", f"本练习要求使用 <code>{name}</code>。")

    @staticmethod
    def student_value(response):
        """The value the student's code returned for a case (CPU tensor), or None."""
        out = response.get("out") if isinstance(response, dict) else None
        value = out.get("value") if isinstance(out, dict) else None
        return value if isinstance(value, torch.Tensor) else None

    def diagnose(self, case, response, expected=None) -> Optional[str]:
        """The hint of the first typical mistake the student's result on this one case
        matches, where that mistake differs from the reference."""
        if expected is None:
            expected = self.expect(case)
        return self.diagnose_all([case], [expected], [response], [0]).get(0)

    def diagnose_all(self, cases, expectations, responses, failed) -> dict:
        """{case index: hint} for the failed cases. A mistake's hint is given only when, on
        every case where the mistake and the reference differ (and the student returned a
        finite value of the right shape), the student's value matches the mistake: a
        degenerate case where both are 0 proves nothing, and a case where the student
        differs from the mistake rules it out."""
        hints = {}
        if not self.mistakes or not failed:
            return hints
        values = {}
        for k, case in enumerate(cases):
            got = self.student_value(responses[k]) if k < len(responses) else None
            ref_value = expectations[k][0] if expectations[k] else None
            if (isinstance(got, torch.Tensor) and isinstance(ref_value, torch.Tensor)
                    and got.shape == ref_value.shape and bool(torch.isfinite(got).all())):
                values[k] = (got, ref_value)
        args_of = {}
        for mistake in self.mistakes:
            matched, contradicted = [], False
            for k, (got, ref_value) in values.items():
                case = cases[k]
                if k not in args_of:
                    args_of[k] = tuple(decode_arg(a) for a in case.args)
                try:
                    with torch.no_grad():
                        wrong = self.call_for_value(mistake.fn, case, args_of[k], dict(case.kwargs))
                except Exception:
                    continue
                if not isinstance(wrong, torch.Tensor) or wrong.shape != ref_value.shape:
                    continue
                dtype = case.float_dtype()
                if compare(wrong, ref_value, dtype, self.tol) is None:
                    continue            # the mistake is right here: this case tells nothing
                if compare(got, wrong, dtype, self.tol) is None:
                    matched.append(k)
                else:
                    contradicted = True
                    break
            if matched and not contradicted:
                for k in matched:
                    if k in failed and k not in hints:
                        hints[k] = self.mistake_hint(mistake)
        return hints

    def mistake_hint(self, mistake) -> Hint:
        index = self.mistakes.index(mistake)
        key = f"{'variant' if mistake.source else 'mistake'}-{self.id}-{index}"
        return Hint(key, mistake.hint, "mistake", mistake.book or self.book)

    def call_for_value(self, fn, case, args, kwargs):
        return fn(*args, **kwargs)


class GradExercise(Exercise):
    """The student returns a gradient tensor shaped like the first input."""
    kind = runtime_kind = "gradient"

    def evaluate_reference(self, case, upcast=False):
        fn = getattr(self.reference, "__wrapped_reference__", self.reference)
        cast = _upcast if upcast else (lambda a: a)
        return fn(*(cast(a) for a in case.args), **{k: cast(v) for k, v in case.kwargs.items()}), ()

    def judge(self, case, expected, response, device):
        value, _ = expected
        check_call(response, self)
        check_forbidden(response.get("calls", ()), self.forbidden)
        like = next(a for a in case.args if isinstance(a, torch.Tensor))
        dtype = case.float_dtype()
        got = check_tensor_result(response.get("out", {}), like.shape, dtype, device, exercise=self)
        check_unchanged(response.get("mutated"))
        diff = compare(got, value, dtype, self.tol, case.subgrad.get(0), getattr(expected, "precise_value", None))
        if diff:
            if not bool(torch.isfinite(got).all()):
                raise nonfinite_failure(case, exercise=self)
            raise gradient_failure(diff, case, like.shape, "", "梯度值" if self.graph else "结果", self, response,
                                   "gradient", case.subgrad.get(0))


class ModuleExercise(Exercise):
    """The student writes an nn.Module class; it is built with the case's constructor
    arguments, run before and after .to(device), and must hold no parameters."""
    kind = runtime_kind = "module"

    def validate_solution(self, solution):
        if solution is None:
            return "尚未实现：传给 check 的是 None。"
        if not (isinstance(solution, type) and issubclass(solution, nn.Module)):
            return f"传给 check 的应是继承自 nn.Module 的类 {self.func_name}（类本身，而不是实例或函数）。"
        return None

    def evaluate_reference(self, case, upcast=False):
        merged = Case(case.name, case.args, {**case.kwargs, **(case.init_kwargs or {})}, case.grad_args,
                      case.value_only)
        return Exercise.evaluate_reference(self, merged, upcast)

    def request_case(self, case):
        return {**Exercise.request_case(self, case), "init_kwargs": dict(case.init_kwargs or {})}

    def judge(self, case, expected, response, device):
        init = response.get("init", {"status": "missing"})
        check_call(init, self)
        if "typename" in init:
            raise CaseFailure("fail", f"{self.func_name}(...) 没有得到 nn.Module 实例（得到的是 "
                              f"{html.escape(str(init['typename']))}）。")
        check_call(response.get("params_call", {"status": "missing"}), self)
        params = [html.escape(str(p)) for p in response.get("params", [])]
        if params:
            raise CaseFailure("fail", f"模块含有可训练参数 {', '.join(params)}：损失函数不应有参数，否则优化器会去“训练”它们。",
                              Hint("module-parameters", "固定的张量（如类别权重）请用 self.register_buffer(...) 注册，"
                                   "或保存为普通属性。", "module", "book/06_code.html#buffer-weightedcrossentropy"))
        runs = response["runs"]
        self.judge_loss(case, expected, runs[0], device, prefix="（模块在 CPU 上、输入在目标设备上）")
        check_call(response.get("moved", {"status": "missing"}), self)
        if len(runs) < 2:
            raise CaseFailure("error", "评分器没有收到模块移动到目标设备之后的运行结果。")
        self.judge_loss(case, expected, runs[1], device, prefix=f"（调用 .to({device}) 之后）")

    @staticmethod
    def student_value(response):
        runs = response.get("runs") if isinstance(response, dict) else None
        return Exercise.student_value(runs[0]) if runs else None

    def call_for_value(self, fn, case, args, kwargs):
        init = dict(case.init_kwargs or {})
        if isinstance(fn, type):
            return fn(**init)(*args, **kwargs)
        return fn(*args, **kwargs, **init)


class OutcomeExercise(Exercise):
    """Graded by what the student's function achieves on data the grader generates.
    ``returns`` "pair": the function returns (w, b); "model": it returns a model whose logits
    on held-out inputs are judged. ``request_fields`` lists the case's constructor data the
    runtime may see (never the answers: the true line, the test labels)."""

    kind = "outcome"

    def __init__(self, *args, evaluate, returns, request_fields=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.evaluate = evaluate
        self.runtime_kind = returns
        self.request_fields = tuple(request_fields)

    def expect(self, case):
        return Expected(None, ())

    def request_case(self, case):
        extra = {k: case.init_kwargs[k] for k in self.request_fields}
        return {"args": [encode_arg(a) for a in case.args], "kwargs": dict(case.kwargs), **extra}

    def judge(self, case, expected, response, device):
        check_call(response, self)
        self.evaluate(self, case, response)


# =================================================================== case factories
# Scoring groups (docs/grader.md, "Score"): every case carries the tag "group:<name>"; a group
# scores only when all its cases pass, and every group has equal weight. Each hidden case joins
# the group of the visible cases it varies (another shape, seed or dtype of the same aspect), so
# that a typical mistake loses the same share of the points in the notebook and after
# autograding, and a case where a mistake cannot show (one element, identical inputs, a
# parameter at its neutral value) never scores on its own.
def G(name: str) -> str:
    """The tag that puts a case in scoring group ``name``."""
    return f"group:{name}"


def _regression_cases(param=None, default=1.0):
    """Cases for element-wise regression losses: dtypes, shapes, a transposed input,
    the loss's parameter, large residuals and, hidden, more of each."""
    def make(r: Rand, hidden: bool):
        cases = []

        def add(name, shape, group, dtype=torch.float32, scale=1.5, kw=None, noncontig=False, tags=()):
            if noncontig:
                pred = r.noncontiguous(*shape, dtype=dtype, scale=scale)
                target = r.noncontiguous(*shape, dtype=dtype, scale=scale)
            else:
                pred = r.normal(*shape, dtype=dtype, scale=scale)
                target = r.normal(*shape, dtype=dtype, scale=scale)
            cases.append(Case(name, (pred, target), kw or {}, grad_args=(0, 1), tags=frozenset(tags) | {G(group)}))

        add("一维 float32", (8,), "basic")
        add("二维 float64", (3, 4), "float64", dtype=torch.float64)
        add("转置后的非连续张量", (4, 5), "noncontiguous", noncontig=True, tags=("noncontiguous",))
        add("大残差（含离群值）", (6,), "large", scale=6.0)
        if param:
            add(f"{param}={default * 0.5:g}", (10,), "param", kw={param: default * 0.5})
            add(f"{param}=2", (2, 5), "param", dtype=torch.float64, kw={param: 2.0})
        if hidden:
            add("三维 float32", (2, 3, 4), "basic", scale=3.0)
            add("单个元素", (1,), "float64", dtype=torch.float64)        # n = 1: no 1/n can show
            add("较大的批量 float32", (64,), "basic", scale=2.0)
            add("非连续 float64", (3, 6), "noncontiguous", dtype=torch.float64, noncontig=True, tags=("noncontiguous",))
            if param:
                add(f"{param}=0.3 float64", (5, 3), "param", dtype=torch.float64, scale=0.8, kw={param: 0.3})
        return cases
    return make


def _mae_cases(r: Rand, hidden: bool):
    cases = _regression_cases()(r, hidden)
    pred = r.normal(8)
    target = pred.clone()
    target[::2] += r.normal(4)
    n = pred.numel()
    zero = pred == target
    bound = torch.full_like(pred, 1.0 / n)
    # where pred == target any subgradient in [-1/n, 1/n] is valid, for pred and for target
    cases.append(Case("部分残差恰好为 0（不可导点）", (pred, target), grad_args=(0, 1), tags=frozenset({"edge", G("edge")}),
                      subgrad={0: SubgradientRange(zero, -bound, bound), 1: SubgradientRange(zero, -bound, bound)}))
    return cases


def _mae_grad_cases(r: Rand, hidden: bool):
    cases = [Case(c.name, c.args, c.kwargs, tags=c.tags) for c in _regression_cases()(r, hidden)]
    edge = _mae_cases(Rand(7), False)[-1]
    cases.append(Case(edge.name, edge.args, tags=edge.tags, subgrad={0: edge.subgrad[0]}))
    return cases


def _as_grad_cases(make):
    def grad_cases(r, hidden):
        return [Case(c.name, c.args, c.kwargs, tags=c.tags, subgrad=c.subgrad) for c in make(r, hidden)]
    return grad_cases


def _bce_cases(r: Rand, hidden: bool):
    cases = []
    for name, shape, dtype, group in [("一维 float32", (8,), torch.float32, "basic"),
                                      ("二维 float64", (4, 3), torch.float64, "float64")] + (
            [("三维 float32", (2, 3, 4), torch.float32, "basic"),
             ("较大的批量 float64", (50,), torch.float64, "float64")] if hidden else []):
        probs = r.uniform(*shape, low=0.02, high=0.98, dtype=dtype)
        cases.append(Case(name, (probs, r.labels01(*shape, dtype=dtype)), grad_args=(0,), tags=frozenset({G(group)})))
    probs = r.uniform(5, 4, low=0.05, high=0.95).t()
    cases.append(Case("转置后的非连续张量", (probs, r.labels01(5, 4).t()), grad_args=(0,),
                      tags=frozenset({"noncontiguous", G("noncontiguous")})))
    target = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    probs = torch.tensor([0.0, 1.0, 1.0, 0.0, 1e-30, 1 - 1e-7])
    cases.append(Case("概率恰为 0 和 1（PyTorch 将 log 截断在 −100，只评分损失值）", (probs, target),
                      value_only=True, tags=frozenset({"prob01", G("prob01")})))
    cases.append(Case("软标签（目标在 0 和 1 之间）", (r.uniform(6, low=0.05, high=0.95), r.uniform(6)), grad_args=(0,),
                      tags=frozenset({G("soft")})))
    return cases


def _logit_cases(r: Rand, hidden: bool):
    cases = []
    for name, shape, dtype, scale, group in [("一维 float32", (8,), torch.float32, 2.0, "basic"),
                                             ("二维 float64", (4, 3), torch.float64, 2.0, "float64")] + (
            [("三维 float32", (2, 3, 4), torch.float32, 3.0, "basic"),
             ("单个元素 float64", (1,), torch.float64, 1.0, "float64")] if hidden else []):
        cases.append(Case(name, (r.normal(*shape, dtype=dtype, scale=scale), r.labels01(*shape, dtype=dtype)),
                          grad_args=(0,), tags=frozenset({G(group)})))
    cases.append(Case("转置后的非连续张量", (r.noncontiguous(4, 5, scale=2.0), r.labels01(5, 4).t()), grad_args=(0,),
                      tags=frozenset({"noncontiguous", G("noncontiguous")})))
    big = torch.tensor([100.0, -100.0, 250.0, -250.0, 1000.0, -1000.0, 88.0, -104.0])
    cases.append(Case("很大的 logits（±100 及以上，float32）", (big, torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0])),
                      grad_args=(0,), tags=frozenset({"large", G("large")})))
    if hidden:
        cases.append(Case("很大的 logits，软标签", (big.flip(0), torch.linspace(0, 1, 8)), grad_args=(0,),
                          tags=frozenset({"large", G("large")})))
    return cases


def _class_cases(extra_kw=None, large=True):
    """(N, C) logits with int64 targets."""
    def make(r: Rand, hidden: bool):
        cases = []

        def add(name, n, c, group, dtype=torch.float32, scale=1.5, kw=None, tags=()):
            cases.append(Case(name, (r.normal(n, c, dtype=dtype, scale=scale), r.integers(c, n)), kw or {},
                              grad_args=(0,), tags=frozenset(tags) | {G(group)}))
        add("N=6, C=4, float32", 6, 4, "basic")
        add("N=5, C=3, float64", 5, 3, "float64", dtype=torch.float64)
        if extra_kw:
            for kw in extra_kw:
                add(", ".join(f"{k}={v:g}" for k, v in kw.items()), 7, 5, "param", kw=kw)
        logits = r.normal(3, 8, scale=2.0).t()
        cases.append(Case("转置后的非连续 logits", (logits, r.integers(3, 8)), grad_args=(0,),
                          tags=frozenset({"noncontiguous", G("noncontiguous")})))
        if large:
            add("很大的 logits（float32，数值稳定性）", 4, 3, "large", scale=400.0, tags=("large",))
        if hidden:
            add("N=1, C=2", 1, 2, "float64", dtype=torch.float64)      # one sample: no 1/N can show
            add("N=32, C=10, float32", 32, 10, "basic", scale=1.5)
            if large:
                add("很大的 logits（float64）", 5, 6, "large", dtype=torch.float64, scale=1000.0, tags=("large",))
            if extra_kw:
                add(", ".join(f"{k}={v:g}" for k, v in extra_kw[-1].items()) + " float64", 6, 4, "param",
                    dtype=torch.float64, kw=extra_kw[-1])
        return cases
    return make


def _weighted_cases(r: Rand, hidden: bool):
    cases = []
    for name, n, c, dtype, group in [("N=6, C=3, float32", 6, 3, torch.float32, "basic"),
                                     ("N=8, C=4, float64", 8, 4, torch.float64, "float64")] + (
            [("N=20, C=5, float32", 20, 5, torch.float32, "basic"),
             ("N=1, C=3, float64", 1, 3, torch.float64, "float64")] if hidden else []):
        weight = r.uniform(c, low=0.2, high=3.0, dtype=dtype)
        cases.append(Case(name, (r.normal(n, c, dtype=dtype, scale=2.0), r.integers(c, n), weight), grad_args=(0,),
                          tags=frozenset({G(group)})))
    cases.append(Case("类别权重 [1, 2, 3]，转置后的非连续 logits",
                      (r.normal(3, 5, scale=2.0).t(), torch.tensor([0, 2, 2, 1, 2]), torch.tensor([1.0, 2.0, 3.0])),
                      grad_args=(0,), tags=frozenset({"noncontiguous", G("noncontiguous")})))
    cases.append(Case("很大的 logits（float32）", (r.normal(4, 3, scale=300.0), r.integers(3, 4), torch.tensor([0.5, 1.0, 4.0])),
                      grad_args=(0,), tags=frozenset({"large", G("large")})))
    return cases


def _binary_focal_cases(r: Rand, hidden: bool):
    cases = []
    for name, shape, dtype, kw, group in [
            ("一维 float32，默认 α、γ", (8,), torch.float32, {}, "basic"),
            ("二维 float64，α=0.5, γ=1", (4, 3), torch.float64, {"alpha": 0.5, "gamma": 1.0}, "float64"),
            ("α=−1（不使用 α_t 加权）", (6,), torch.float32, {"alpha": -1.0}, "param"),
            ("多标签 (N, C)，γ=0", (5, 3), torch.float32, {"gamma": 0.0}, "param")] + (
            [("三维 float64, α=0.75, γ=3", (2, 3, 4), torch.float64, {"alpha": 0.75, "gamma": 3.0}, "param")]
            if hidden else []):
        cases.append(Case(name, (r.normal(*shape, dtype=dtype, scale=2.0), r.labels01(*shape, dtype=dtype)), kw,
                          grad_args=(0,), tags=frozenset({G(group)})))
    big = torch.tensor([100.0, -100.0, 300.0, -300.0])
    cases.append(Case("很大的 logits（float32）", (big, torch.tensor([1.0, 1.0, 0.0, 0.0])), grad_args=(0,),
                      tags=frozenset({"large", G("large")})))
    return cases


def _pair_cases(r: Rand, hidden: bool):
    cases = []
    for name, n, d, dtype, kw, group in [("N=6, D=3, float32", 6, 3, torch.float32, {}, "basic"),
                                         ("N=5, D=4, float64, margin=2", 5, 4, torch.float64, {"margin": 2.0}, "margin")] + (
            [("N=16, D=8, float32, margin=0.5", 16, 8, torch.float32, {"margin": 0.5}, "margin")] if hidden else []):
        x1 = r.normal(n, d, dtype=dtype, scale=0.6)
        x2 = r.normal(n, d, dtype=dtype, scale=0.6)
        if group == "margin":      # pairs well inside and well outside the margin, on every seed
            near = torch.arange(n) < (n + 1) // 2
            x2 = x1 + torch.where(near.unsqueeze(1), 0.15, 3.0).to(dtype) * x2
        label = torch.tensor([i % 2 for i in range(n)], dtype=dtype)
        cases.append(Case(name, (x1, x2, label), kw, grad_args=(0, 1), tags=frozenset({G(group)})))
    x1 = r.normal(4, 3)
    x2 = x1.clone()
    x2[2:] += r.normal(2, 3)
    label = torch.tensor([0.0, 1.0, 1.0, 0.0])
    # rows 0 and 1 coincide: d = 0 is not differentiable; for the dissimilar row 1 the
    # gradient is -2·margin·g/N with g any vector of norm <= 1, for the similar row 0 it is 0
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[1] = True
    bound = torch.full((4, 3), 2.0 / 4)
    sub = SubgradientRange(mask, -bound, bound)
    cases.append(Case("两点重合（距离为 0，不可导点）", (x1, x2, label), grad_args=(0, 1), subgrad={0: sub, 1: sub},
                      tags=frozenset({"edge", G("edge")})))
    return cases


def _triplet_cases(r: Rand, hidden: bool):
    cases = []
    for name, n, d, dtype, kw, group in [("N=6, D=3, float32", 6, 3, torch.float32, {}, "basic"),
                                         ("N=5, D=4, float64, margin=2", 5, 4, torch.float64, {"margin": 2.0}, "margin")] + (
            [("N=16, D=8, float32, margin=0.3", 16, 8, torch.float32, {"margin": 0.3}, "basic")] if hidden else []):
        cases.append(Case(name, (r.normal(n, d, dtype=dtype), r.normal(n, d, dtype=dtype), r.normal(n, d, dtype=dtype)),
                          kw, grad_args=(0, 1, 2), tags=frozenset({G(group)})))
    a = r.normal(3, 2)
    p = a.clone()
    p[1:] += r.normal(2, 2, scale=0.5)
    n = a + torch.tensor([[0.3, 0.2], [2.0, 0.0], [0.1, -0.2]])
    # row 0: anchor == positive and the hinge is active: d(a, p) has any subgradient g, |g| <= 1
    mask = torch.zeros(3, 2, dtype=torch.bool)
    mask[0] = True
    u = (a[0] - n[0]) / (a[0] - n[0]).norm()
    lo_a = torch.zeros(3, 2)
    hi_a = torch.zeros(3, 2)
    lo_a[0], hi_a[0] = (-1 - u) / 3, (1 - u) / 3
    bound = torch.full((3, 2), 1.0 / 3)
    cases.append(Case("锚点与正样本重合（不可导点）", (a, p, n), grad_args=(0, 1, 2), tags=frozenset({"edge", G("edge")}),
                      subgrad={0: SubgradientRange(mask, lo_a, hi_a), 1: SubgradientRange(mask, -bound, bound)}))
    return cases


def _segmentation_cases(r: Rand, hidden: bool):
    cases = []
    for name, shape, dtype, kw, group in [
            ("(N, C)=(6, 3) float32", (6, 3), torch.float32, {}, "basic"),
            ("(N, C, H, W)=(2, 3, 4, 4) float64", (2, 3, 4, 4), torch.float64, {}, "spatial"),
            ("(N, C, L)=(2, 4, 5) float32, smooth=0.5", (2, 4, 5), torch.float32, {"smooth": 0.5}, "param")] + (
            [("(N, C, D, H, W)=(1, 2, 2, 3, 3) float64, smooth=0", (1, 2, 2, 3, 3), torch.float64, {"smooth": 0.0},
              "param"),
             ("(N, C, H, W)=(4, 5, 8, 8) float32", (4, 5, 8, 8), torch.float32, {}, "spatial")] if hidden else []):
        target = r.integers(shape[1], shape[0], *shape[2:])
        cases.append(Case(name, (r.normal(*shape, dtype=dtype, scale=2.0), target), kw, grad_args=(0,),
                          tags=frozenset({G(group)})))
    logits = r.normal(2, 4, 4, 3, scale=2.0).permute(0, 3, 1, 2)  # channels-last layout: not contiguous
    cases.append(Case("非连续的 (N, C, H, W) logits", (logits, r.integers(3, 2, 4, 4)), grad_args=(0,),
                      tags=frozenset({"noncontiguous", G("noncontiguous")})))
    return cases


def _boxes(r: Rand, n, dtype, disjoint_rows=()):
    xy = r.uniform(n, 2, low=0.0, high=4.0, dtype=dtype)
    wh = r.uniform(n, 2, low=0.5, high=3.0, dtype=dtype)
    pred = torch.cat([xy, xy + wh], dim=1)
    shift = r.uniform(n, 2, low=-1.0, high=1.0, dtype=dtype)
    twh = wh * r.uniform(n, 2, low=0.6, high=1.4, dtype=dtype)
    txy = xy + shift
    for i in disjoint_rows:
        txy[i] = xy[i] + wh[i] + 1.0
    return pred, torch.cat([txy, txy + twh], dim=1)


def _identical_box_subgrad(boxes):
    """At pred == target the loss 1 − IoU is at its minimum, a kink: moving x1 (or x2) either
    way raises it at rate 1/w (shrinking loses intersection, growing adds union), so any
    value in [−1/(N·w), 1/(N·w)] is a valid subgradient for the x coordinates, 1/(N·h) for y."""
    n = boxes.shape[0]
    w = (boxes[:, 2] - boxes[:, 0]).unsqueeze(1)
    h = (boxes[:, 3] - boxes[:, 1]).unsqueeze(1)
    bound = torch.cat([1 / (n * w), 1 / (n * h), 1 / (n * w), 1 / (n * h)], dim=1).to(boxes.dtype)
    return SubgradientRange(torch.ones_like(boxes, dtype=torch.bool), -bound, bound)


def _box_cases(r: Rand, hidden: bool):
    same = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 4.0, 3.0]])
    # identical boxes (where a missing clamp cannot show) score together with the disjoint ones
    cases = [Case("N=6 个重叠的框 float32", _boxes(r, 6, torch.float32), grad_args=(0,), tags=frozenset({G("basic")})),
             Case("N=5 float64", _boxes(r, 5, torch.float64), grad_args=(0,), tags=frozenset({G("float64")})),
             Case("含不相交的框（IoU=0）", _boxes(r, 4, torch.float32, disjoint_rows=(1, 3)), grad_args=(0,),
                  tags=frozenset({"edge", G("edge")})),
             Case("完全相同的框（IoU=1，不可导点）", (same, same.clone()), grad_args=(0,),
                  subgrad={0: _identical_box_subgrad(same)}, tags=frozenset({"edge", G("edge")}))]
    if hidden:
        cases.append(Case("N=32 float32", _boxes(r, 32, torch.float32, disjoint_rows=(0, 5)), grad_args=(0,),
                          tags=frozenset({G("edge")})))
        cases.append(Case("一个框包含另一个", (torch.tensor([[0.0, 0.0, 4.0, 4.0]], dtype=torch.float64),
                                              torch.tensor([[1.0, 1.0, 2.0, 3.0]], dtype=torch.float64)), grad_args=(0,),
                          tags=frozenset({G("float64")})))
    return cases


def _numgrad_cases(r: Rand, hidden: bool):
    cubic, wavy, softplus_norm = (INPUT_FUNCTIONS[n] for n in ("cubic", "wavy", "softplus_norm"))

    cases = [Case("f(x)=Σx³，x 形状 (5,)", (cubic, r.normal(5, dtype=torch.float64)), tags=frozenset({G("basic")})),
             Case("f(x)=Σ sin(x)·x²，x 形状 (2, 3)，eps=1e-3", (wavy, r.normal(2, 3, dtype=torch.float64)),
                  {"eps": 1e-3}, tags=frozenset({G("eps")})),
             Case("转置后的非连续 x，eps=1e-4", (softplus_norm, r.normal(4, 3, dtype=torch.float64).t()), {"eps": 1e-4},
                  tags=frozenset({"noncontiguous", G("noncontiguous")}))]
    if hidden:
        cases.append(Case("x 形状 (2, 2, 2)，eps=1e-3", (wavy, r.normal(2, 2, 2, dtype=torch.float64)), {"eps": 1e-3},
                          tags=frozenset({G("eps")})))
        cases.append(Case("x 为 float32，eps=1e-2", (cubic, r.normal(6)), {"eps": 1e-2}, tags=frozenset({G("eps")})))
    return cases


def _module_cases(make, init_kwargs):
    def cases(r, hidden):
        out = []
        for c in make(r, hidden):
            init = dict(init_kwargs)
            for k in [k for k in c.kwargs if k in init or k in ("alpha", "gamma", "smoothing", "smooth")]:
                init[k] = c.kwargs[k]
            out.append(Case(c.name, c.args, {}, grad_args=c.grad_args, tags=c.tags, init_kwargs=init))
        return out
    return cases


def _module_weighted_cases(r: Rand, hidden: bool):
    out = []
    for c in _weighted_cases(r, hidden):
        logits, target, weight = c.args   # weights given as float32 CPU tensors, logits of any dtype
        out.append(Case(c.name, (logits, target), {}, grad_args=(0,), tags=c.tags,
                        init_kwargs={"class_weights": weight.float()}))
    return out


# =================================================================== outcome exercises
def _robust_fit_cases(r: Rand, hidden: bool):
    cases = []
    for k, dtype in enumerate([torch.float32] + ([torch.float64, torch.float32] if hidden else [])):
        n = 200
        x = r.uniform(n, low=-3.0, high=3.0, dtype=dtype)
        w, b = 2.0 - 0.5 * k, 1.0 + 0.5 * k
        y = w * x + b + r.normal(n, dtype=dtype, scale=0.3)
        outliers = (x > 1.0) & (r.uniform(n, dtype=dtype) < 0.3)
        y = torch.where(outliers, y - r.uniform(n, low=8.0, high=15.0, dtype=dtype), y)
        cases.append(Case(f"含 {int(outliers.sum())} 个离群点的数据（{str(dtype)[6:]}）", (x, y),
                          init_kwargs={"w": w, "b": b}, tags=frozenset({G("fit")})))
    return cases


def _ols(x, y):
    xm, ym = x.mean(), y.mean()
    w = ((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum()
    return float(w), float(ym - w * xm)


def _evaluate_robust_fit(exercise, case, response):
    out = response.get("out", {})
    if out.get("type") == "none":
        raise CaseFailure("notimpl", "尚未实现：函数返回了 None。")
    value = out.get("value") if out.get("type") == "tensor" else None
    if not isinstance(value, torch.Tensor) or value.numel() != 2:
        raise CaseFailure("fail", f"应返回 (w, b) 两个数，你的函数返回了 {html.escape(str(out.get('typename', '?')))}。")
    w, b = (float(v) for v in value.reshape(-1))
    true_w, true_b = case.init_kwargs["w"], case.init_kwargs["b"]
    ols_w, _ = _ols(*(a.double() for a in case.args))
    if not (abs(w - true_w) <= 0.3 and abs(b - true_b) <= 0.5):
        raise CaseFailure("fail", f"拟合结果 w={w:.3f}, b={b:.3f}，真实直线 w={true_w:g}, b={true_b:g}；"
                          f"最小二乘（MSE）拟合的斜率是 {ols_w:.3f}。你的直线仍被离群点拉偏了。",
                          Hint("outcome-robust-fit", "用你实现的 huber_loss（δ≈1）作损失，梯度下降足够多步（如 Adam，"
                               "lr=0.1，300 步），并确认损失真的在下降。", "outcome", "book/02_regression.html#huber"))


def _imbalanced_data(r: Rand, n, dtype):
    y = (r.uniform(n) < 0.05).long()
    centers = torch.tensor([[0.0, 0.0], [1.8, 1.8]], dtype=dtype)
    x = centers[y] + r.normal(n, 2, dtype=dtype)
    return x, y


def _imbalanced_cases(r: Rand, hidden: bool):
    cases = []
    for k in range(2 if hidden else 1):
        x, y = _imbalanced_data(r, 1000, torch.float32)
        x_test, y_test = _imbalanced_data(r, 4000, torch.float32)
        cases.append(Case(f"训练集 1000 个样本，其中少数类 {int(y.sum())} 个", (x, y),
                          init_kwargs={"x_test": x_test, "y_test": y_test}, tags=frozenset({G("fit")})))
    return cases


def _evaluate_imbalanced(exercise, case, response):
    out = response.get("out", {})
    if out.get("type") == "none":
        raise CaseFailure("notimpl", "尚未实现：函数返回了 None。")
    if "predict" not in response:
        raise CaseFailure("fail", f"应返回训练好的模型（可调用对象），你的函数返回了 {html.escape(str(out.get('typename', '?')))}。")
    check_call(response["predict"], exercise)
    y_test = case.init_kwargs["y_test"]
    logits = out.get("value") if out.get("type") == "tensor" else None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(y_test), 2):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else html.escape(str(out.get("typename", "?")))
        raise CaseFailure("fail", f"模型对 (N, 2) 特征应输出 (N, 2) 的 logits，实际得到 {shape}。")
    pred = logits.argmax(dim=1).cpu()
    minority = y_test == 1
    recall = float((pred[minority] == 1).float().mean())
    recall_major = float((pred[~minority] == 0).float().mean())
    if recall < 0.7 or recall_major < 0.7:
        raise CaseFailure("fail", f"测试集上少数类召回率 {recall:.1%}，多数类召回率 {recall_major:.1%}；"
                          "要求两者都不低于 70%。",
                          Hint("outcome-minority", "普通交叉熵会几乎忽略少数类：用加权交叉熵（类别权重与类别频率成反比）"
                               "训练；只带标量 α 的 Focal Loss 在这里往往不够，需要按类别设置 α_t 或同时使用类别权重。",
                               "outcome", "book/05_selection.html#ce-ce-focal-loss")
                          if recall < 0.7 else Hint("outcome-overweighted", "少数类的权重过大，模型把太多样本判成了少数类："
                                                    "减小权重。", "outcome", "book/05_selection.html#ce-ce-focal-loss"))


# =================================================================== the registry
def _f(*names):
    return tuple(getattr(F, n) for n in names)


def _mean_abs(p, t):
    return (p - t).abs().mean()


def _ce_rows(logits, target):
    return -torch.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)


def _onehot(logits, target):
    return F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(logits.dtype)


_REGRESSION_CURVE = dict(xlabel="残差 ŷ − y", lo=-3.0, hi=3.0)
_LOGIT_CURVE = dict(xlabel="logit x（目标 y = 1）", lo=-8.0, hi=8.0)


# A plotted point is a batch of CURVE_BATCH equal elements: the mean loss is then the
# loss of one element, while a sum instead of a mean (or a gradient without 1/n) shows
# as a curve CURVE_BATCH times too high.
CURVE_BATCH = 4


def _residual_point(x):
    return (x.expand(CURVE_BATCH).clone(), torch.zeros(CURVE_BATCH, dtype=x.dtype, device=x.device)), {}


def _logit_point(x):
    return (x.expand(CURVE_BATCH).clone(), torch.ones(CURVE_BATCH, dtype=x.dtype, device=x.device)), {}


_prob_point = _logit_point   # probabilities, target y = 1


def _huber_np(p, t, delta=1.0, half=True, shift=True, scale_linear=True):
    r = (p - t).abs()
    quad = (0.5 if half else 1.0) * r ** 2
    lin = (delta if scale_linear else 1.0) * r - ((0.5 * delta ** 2) if shift else 0.0)
    return torch.where(r <= delta, quad, lin).mean()


_SUM_HINT = "你用了求和（sum）而不是平均（mean）：要除以元素个数 n。"


def _ls_km1(x, t, eps):
    log_p = torch.log_softmax(x, 1)
    k = x.shape[1]
    target = torch.full_like(log_p, eps / (k - 1))
    target.scatter_(1, t.unsqueeze(1), 1 - eps)
    return -(target * log_p).sum(1).mean()


def _sfl(x, y, alpha, gamma, swap=False, always_alpha=False, use_p=False):
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - (p if use_p else p_t)) ** gamma
    if alpha >= 0 or always_alpha:
        a_t = alpha * y + (1 - alpha) * (1 - y)
        if swap:
            a_t = (1 - alpha) * y + alpha * (1 - y)
        loss = a_t * loss
    return loss.mean()


def _dice(x, t, smooth, probs=True, two=2.0, sigmoid=False):
    p = torch.sigmoid(x) if sigmoid else (torch.softmax(x, 1) if probs else x)
    oh = _onehot(x, t)
    return 1 - (two * (p * oh).sum() + smooth) / (p.sum() + oh.sum() + smooth)


def _iou(x, t, smooth, subtract=True, probs=True):
    p = torch.softmax(x, 1) if probs else x
    oh = _onehot(x, t)
    inter = (p * oh).sum()
    return 1 - (inter + smooth) / (p.sum() + oh.sum() - (inter if subtract else 0) + smooth)


def _biou(p, t, subtract=True, clamp=True):
    lt = torch.maximum(p[:, :2], t[:, :2])
    rb = torch.minimum(p[:, 2:], t[:, 2:])
    wh = (rb - lt).clamp(min=0) if clamp else (rb - lt)
    inter = wh[:, 0] * wh[:, 1]
    ap = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    at = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    return (1 - inter / (ap + at - (inter if subtract else 0))).mean()


# =================================================================== library variants
# Conventions that public libraries really use and that differ from the course's formula
# (sources read, with versions, are listed in tests/corpus/library_variants.py). They are
# diagnosed like typical mistakes, after them: a variant is named only when the student's
# results match it on every case where it differs from the course's formula.
def _flat_nc(x):
    return x.reshape(x.shape[0], x.shape[1], -1)


def _dice_parts(x, t, squared=False):
    p = _flat_nc(torch.softmax(x, 1))
    oh = _flat_nc(_onehot(x, t))
    return p, oh, (p * oh), (p * p if squared else p), oh


def _dice_per_class(x, t, smooth=1.0, iou=False, mask_absent=True):
    """segmentation_models_pytorch (losses/dice.py, jaccard.py, multiclass mode): a score per
    class over batch and positions, 1 − score averaged over the classes present."""
    p, oh, pt, ps, ts = _dice_parts(x, t)
    inter, card = pt.sum((0, 2)), (ps + ts).sum((0, 2))
    score = ((inter + smooth) / (card - inter + smooth).clamp_min(1e-7) if iou
             else (2 * inter + smooth) / (card + smooth).clamp_min(1e-7))
    loss = 1 - score
    if mask_absent:
        loss = loss * (ts.sum((0, 2)) > 0).to(loss.dtype)
    return loss.mean()


def _dice_per_sample(x, t, smooth=1.0, iou=False):
    """A score per sample over classes and positions (eps 1e-8, no smoothing term), 1 − score
    averaged over the batch. (For Dice this equals the global Dice without smoothing, since
    every sample's Σp + Σt is the same: kornia.losses.dice_loss is diagnosed as "缺少平滑项".)"""
    p, oh, pt, ps, ts = _dice_parts(x, t)
    inter, card = pt.sum((1, 2)), (ps + ts).sum((1, 2))
    score = inter / (card - inter + 1e-8) if iou else 2 * inter / (card + 1e-8)
    return (1 - score).mean()


def _dice_per_item(x, t, smooth=1.0):
    """MONAI DiceLoss (reduction="mean"): a Dice per (sample, class), averaged over N·C."""
    p, oh, pt, ps, ts = _dice_parts(x, t)
    inter, card = pt.sum(2), (ps + ts).sum(2)
    return (1 - (2 * inter + 1e-5) / (card + 1e-5)).mean()


def _dice_squared(x, t, smooth=1.0):
    """V-Net (Milletari et al. 2016): squares in the denominator."""
    p, oh, pt, ps, ts = _dice_parts(x, t, squared=True)
    return 1 - (2 * pt.sum() + smooth) / (ps.sum() + ts.sum() + smooth)


def _box_terms(p, t):
    lt = torch.maximum(p[:, :2], t[:, :2])
    rb = torch.minimum(p[:, 2:], t[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1]) + (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1]) - inter
    return inter, union


def _giou_loss(p, t):
    inter, union = _box_terms(p, t)
    iou = inter / (union + 1e-7)
    lt = torch.minimum(p[:, :2], t[:, :2])
    rb = torch.maximum(p[:, 2:], t[:, 2:])
    hull = (rb - lt).prod(1)
    return (1 - iou + (hull - union) / (hull + 1e-7)).mean()


def _diou_loss(p, t):
    inter, union = _box_terms(p, t)
    iou = inter / (union + 1e-7)
    lt = torch.minimum(p[:, :2], t[:, :2])
    rb = torch.maximum(p[:, 2:], t[:, 2:])
    diag = ((rb - lt) ** 2).sum(1) + 1e-7
    centre = (((p[:, :2] + p[:, 2:]) - (t[:, :2] + t[:, 2:])) / 2) ** 2
    return (1 - iou + centre.sum(1) / diag).mean()


def _log_iou_loss(p, t):
    inter, union = _box_terms(p, t)
    return -(inter / union).clamp(min=1e-6).log().mean()


def _square_iou_loss(p, t):
    inter, union = _box_terms(p, t)
    return (1 - (inter / union) ** 2).mean()


def _ls_classy(x, t, smoothing=0.1):
    """ClassyVision / mmpretrain LabelSmoothLoss(mode="classy_vision"): (onehot + ε/K)/(1 + ε)."""
    k = x.shape[1]
    target = (F.one_hot(t, k).to(x.dtype) + smoothing / k) / (1 + smoothing)
    return -(target * torch.log_softmax(x, 1)).sum(1).mean()


def _focal_onevsrest(x, t, alpha=1.0, gamma=2.0):
    """segmentation_models_pytorch FocalLoss(mode="multiclass"): one sigmoid focal loss per
    class (one-vs-rest), each averaged, summed over the classes; α for the positives, 1 − α
    for the negatives."""
    oh = F.one_hot(t, x.shape[1]).to(x.dtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, oh, reduction="none")
    p_t = p * oh + (1 - p) * (1 - oh)
    loss = ce * (1 - p_t) ** gamma * (alpha * oh + (1 - alpha) * (1 - oh))
    return loss.mean(0).sum()


def _focal_eps_softmax(x, t, alpha=1.0, gamma=2.0):
    """kornia 0.5 focal_loss: softmax + eps (1e-8), then log."""
    p = torch.softmax(x, 1) + 1e-8
    oh = F.one_hot(t, x.shape[1]).to(x.dtype)
    return (oh * (-alpha * (1 - p) ** gamma * torch.log(p))).sum(1).mean()


def _focal_nc_mean(x, t, alpha=1.0, gamma=2.0):
    oh = F.one_hot(t, x.shape[1]).to(x.dtype)
    p = torch.softmax(x, 1)
    return (oh * (-alpha * (1 - p) ** gamma * torch.log_softmax(x, 1))).mean()


def _sfl_per_positive(x, y, alpha=0.25, gamma=2.0):
    """detectron2 / RetinaNet: the summed focal loss divided by the number of positives."""
    return _sfl(x, y, alpha, gamma) * x.numel() / y.sum().clamp(min=1.0)


def _contrastive_d(a, b):
    return torch.linalg.vector_norm(a - b, dim=1)


_FOCAL_VARIANTS = [
    Variant("“每个类别一个 sigmoid 二分类 focal loss，再对类别求和”", "segmentation_models_pytorch FocalLoss(mode='multiclass')",
            "对 softmax 的真实类别概率 p_t 计算 α·(1 − p_t)^γ·(−log p_t)，再对样本平均", _focal_onevsrest),
    Variant("“softmax 概率加 ε 再取 log”的 focal loss", "kornia 0.5 focal_loss（eps=1e-8）",
            "在对数空间计算 log_softmax：logits 很大时真实类别的概率会下溢，log(p + ε) 让损失封顶在 −log ε ≈ 18.4",
            _focal_eps_softmax),
    Variant("对 N·C 个元素取平均的 focal loss", "把 one-hot 逐元素损失直接 .mean() 的写法",
            "只对样本数 N 平均（每个样本只有真实类别那一项）", _focal_nc_mean),
]
_DICE_VARIANTS = [
    Variant("逐类别的 Dice（每个类别一个 Dice，再对类别平均）", "segmentation_models_pytorch DiceLoss(mode='multiclass')",
            "在整个批量的所有样本、类别和位置上一起求和，只算一个 Dice：1 − (2Σpt + s)/(Σp + Σt + s)", _dice_per_class),
    Variant("对 N·C 个（样本, 类别）的 Dice 取平均", "MONAI DiceLoss(reduction='mean')",
            "在整个批量上一起求和，只算一个 Dice：1 − (2Σpt + s)/(Σp + Σt + s)", _dice_per_item),
    Variant("分母用平方和的 Dice（Σp² + Σt²）", "V-Net（Milletari et al. 2016）",
            "分母是 Σp + Σt + s，不取平方", _dice_squared),
]
_LS_VARIANTS = [
    Variant("“classy” 形式的标签平滑：目标 (onehot + ε/K)/(1 + ε)", "ClassyVision / mmpretrain LabelSmoothLoss(mode='classy_vision')",
            "目标 (1 − ε)·onehot + ε/K（与 PyTorch 的 label_smoothing 一致）", _ls_classy),
]
_VARIANTS = {
    "bce": [Variant("把概率截断到 [ε, 1 − ε] 的 BCE", "Keras / TensorFlow binary_crossentropy（epsilon=1e-7）",
                    "概率恰为 0 或 1 时与 PyTorch 一致：把每个 log 截断在 −100（torch.clamp(torch.log(p), min=-100)），"
                    "而不是截断概率（那样损失封顶在 −log ε ≈ 16.1）",
                    lambda p, t: -(t * torch.log(p.clamp(1e-7, 1 - 1e-7)) + (1 - t) * torch.log(1 - p.clamp(1e-7, 1 - 1e-7))).mean())],
    "cross_entropy": [Variant("“C 个 sigmoid 二分类”的交叉熵（one-hot 目标上的 BCE，对 N·C 个元素平均）",
                              "mmdetection CrossEntropyLoss(use_sigmoid=True)",
                              "softmax 交叉熵 −log softmax(x)[y]，对样本平均",
                              lambda x, t: F.binary_cross_entropy_with_logits(x, F.one_hot(t, x.shape[1]).to(x.dtype)))],
    "label_smoothing_ce": _LS_VARIANTS,
    "label_smoothing_module": _LS_VARIANTS,
    "focal": _FOCAL_VARIANTS,
    "focal_module": _FOCAL_VARIANTS,
    "sigmoid_focal": [Variant("除以正样本数的 focal loss", "detectron2 / RetinaNet（loss.sum() / 正样本数）",
                              "对全部元素取平均（torchvision sigmoid_focal_loss 的 reduction='mean'）", _sfl_per_positive)],
    "contrastive": [
        Variant("带 ½ 的对比损失 ½[(1 − y)d² + y·max(0, m − d)²]", "Hadsell et al. 2006 原文 / Caffe ContrastiveLossLayer",
                "不带 ½：(1 − y)d² + y·max(0, m − d)²，对样本平均",
                lambda a, b, y, margin=1.0: 0.5 * ref.contrastive_loss.__wrapped_reference__(a, b, y, margin)),
        Variant("距离不平方的对比损失 (1 − y)d + y·max(0, m − d)", "pytorch-metric-learning ContrastiveLoss（pos_margin=0）",
                "两项都平方：(1 − y)d² + y·max(0, m − d)²",
                lambda a, b, y, margin=1.0: ((1 - y) * _contrastive_d(a, b) + y * (margin - _contrastive_d(a, b)).clamp(min=0)).mean()),
        Variant("把 margin 用在平方距离上的对比损失 y·max(0, m − d²)", "Caffe ContrastiveLossLayer(legacy_version=true)",
                "不相似样本的项是 max(0, m − d)²：先用距离 d 与 margin 比较，再平方",
                lambda a, b, y, margin=1.0: ((1 - y) * _contrastive_d(a, b) ** 2
                                             + y * (margin - _contrastive_d(a, b) ** 2).clamp(min=0)).mean()),
    ],
    "triplet": [Variant("soft-margin 三元组损失 log(1 + exp(d(a, p) − d(a, n)))", "Hermans et al. 2017（In Defense of the Triplet Loss）",
                        "带 margin 的铰链 max(0, d(a, p) − d(a, n) + margin)",
                        lambda a, p, n, margin=1.0: F.softplus(_contrastive_d(a, p) - _contrastive_d(a, n)).mean())],
    "dice": _DICE_VARIANTS,
    "dice_module": _DICE_VARIANTS,
    "iou": [Variant("逐类别的 IoU（每个类别一个 IoU，再对类别平均）", "segmentation_models_pytorch JaccardLoss(mode='multiclass')",
                    "在整个批量上一起求和，只算一个 IoU：1 − (I + s)/(Σp + Σt − I + s)",
                    lambda x, t, smooth=1.0: _dice_per_class(x, t, smooth, iou=True)),
            Variant("逐样本的 IoU（每个样本一个 IoU，再对样本平均）", "kornia 风格的逐样本求和",
                    "在整个批量上一起求和，只算一个 IoU，并加上平滑项 s",
                    lambda x, t, smooth=1.0: _dice_per_sample(x, t, smooth, iou=True))],
    "box_iou": [Variant("GIoU 损失 1 − IoU + (|C| − |A ∪ B|)/|C|", "torchvision.ops.generalized_box_iou_loss",
                        "普通的 1 − IoU，没有最小外接框 C 那一项", _giou_loss, book="book/04_other.html#giou"),
                Variant("DIoU 损失（加上中心距离项）", "torchvision.ops.distance_box_iou_loss",
                        "普通的 1 − IoU，没有中心距离项", _diou_loss),
                Variant("−log IoU 损失", "mmdetection IoULoss(mode='log') / UnitBox",
                        "线性形式 1 − IoU", _log_iou_loss),
                Variant("1 − IoU² 损失", "mmdetection IoULoss(mode='square')",
                        "线性形式 1 − IoU", _square_iou_loss)],
    "combined": [Variant("Dice 部分逐类别平均的组合损失", "segmentation_models_pytorch DiceLoss(mode='multiclass') + CrossEntropyLoss",
                         "α·CE + (1 − α)·Dice，Dice 在整个批量上只算一个",
                         lambda x, t, alpha=0.5: alpha * _ce_rows(x, t).mean() + (1 - alpha) * _dice_per_class(x, t, 1.0))],
}
