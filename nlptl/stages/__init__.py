"""One module per command: `nlptl <stage>` is `nlptl.stages.<stage>.run(config)` with the stage's config
dataclass (`demo.run` takes the output directory only). A stage never imports another; `run` and `demo`
run a chain of them. What stages share lives in common.py (the opening and closing of a training stage),
lm.py (the language-modelling flow), classifier.py (task data and fitting) and curve.py (finetune's
learning curve).
"""
