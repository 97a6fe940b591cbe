"""Student submissions used by the grader's tests: correct ones (good), plausible wrong
ones (wrong) and hostile ones (hostile)."""
