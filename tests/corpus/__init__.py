"""Student submissions used by the grader's tests: correct ones (good), plausible wrong
ones (wrong) and hostile ones (hostile)."""


def as_module(fn):
    """A module exercise's submission made from a function ``fn(inputs, targets, **init)``
    (an exercise's typical mistake): the class the student would have written, whose
    constructor keywords are passed on to ``fn``."""
    import torch.nn as nn

    class Mistaken(nn.Module):
        def __init__(self, **init):
            super().__init__()
            self.init = init

        def forward(self, inputs, targets):
            return fn(inputs, targets, **self.init)
    return Mistaken
