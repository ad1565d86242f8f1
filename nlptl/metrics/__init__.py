"""The `evaluate` metric modules shipped with nlptl, one folder each (loaded by path, offline:
evaluation.load_metric), and what they share: `shipped`."""

import copy


def shipped(description: str, value, *, kind: str, what: str, returns: str, options: str = ""):
    """Class decorator of a shipped evaluate.Metric: its docstring in evaluate's layout (the description,
    then what `_compute` takes and returns) and its `_info`. `value`: the feature type of `predictions`
    and `references` (datasets.Value("int64"), or a Sequence of one), described as `kind` (list of int)
    holding `what` (labels); `options`: the Args lines of `_compute`'s other arguments."""
    import datasets
    import evaluate

    kwargs = (f"\nArgs:\n    predictions ({kind}): predicted {what}.\n    references ({kind}): true {what}.\n"
              f"{options}Returns:\n    {returns}\n")

    def info(self):
        # A new MetricInfo each time: evaluate sets the module's name and config on the one it gets.
        features = datasets.Features({"predictions": copy.deepcopy(value), "references": copy.deepcopy(value)})
        return evaluate.MetricInfo(description=description, citation="", inputs_description=kwargs, features=features)

    def decorate(cls):
        cls._info = info
        return evaluate.utils.file_utils.add_start_docstrings(description, kwargs)(cls)

    return decorate
