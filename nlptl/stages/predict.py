"""Use a classifier: labels with scores for texts given as arguments, in a file, or on stdin.

    nlptl predict "What a lovely film" "Dull and far too long"      # the latest finetune run
    nlptl predict --model runs/finetune-... --input texts.txt --json
    cat texts.txt | nlptl predict --model DIR --input - --json      # JSON Lines, one object per text
    printf 'A man sleeps\tA person rests\n' | nlptl predict --model NLI_DIR --input -   # a pair model
    nlptl predict --model EXPORT_DIR "Great"      # an `nlptl export --format onnx` directory (onnxruntime)
    nlptl predict --model EXPORT_DIR --int8 "Great"   # its int8 model (`export --quantize int8`), not model.onnx

Each result has the form nlptl/inference.py describes for the model's task shape. A blank text (an
empty argument, a blank line) is not classified: its result, in its place, says so (as `nlptl serve`
answers it), so with --input result N is line N.
"""

from __future__ import annotations

from nlptl.config import PredictConfig
from nlptl.data.files import read_lines
from nlptl.errors import UsageError
from nlptl.inference import is_onnx_export, onnx_file
from nlptl.models import inspect_model
from nlptl.rundir import default_from
from nlptl.stages.common import check_max_length


def run(cfg: PredictConfig) -> list[dict]:
    spec = cfg.model or default_from("predict")
    onnx_file(spec, cfg.int8)  # --int8 checked before the texts are read
    if not is_onnx_export(spec):
        # Checked before the texts are read, without torch (an export is checked as it loads).
        ref = inspect_model(spec, "--model")
        if not ref.is_classifier:
            raise UsageError(f"--model {ref.spec} is not a classifier; predict needs a finetune run")
        check_max_length(cfg.max_length, ref.config)
    texts = list(cfg.texts) + (read_lines(cfg.input) if cfg.input else [])
    if not texts:
        raise UsageError("no texts to classify; pass them as arguments, or --input FILE, or --input - for standard input")

    from nlptl import runtime
    from nlptl.inference import load_classifier

    runtime.quiet_libraries()
    classifier = load_classifier(spec, cfg.backend, cfg.max_length, int8=cfg.int8)
    pairs = None
    if classifier.pairs:
        # A pair model: each text is "first<TAB>second" (one line of a file, or one argument).
        # A blank line is a blank pair (answered as blank, like a blank text).
        split = [t.split("\t", 1) if t.strip() else [t, ""] for t in texts]
        bad = [i for i, parts in enumerate(split) if len(parts) != 2]
        if bad:
            raise UsageError(f"--model {spec} was trained on text pairs; text {bad[0] + 1} has no tab between "
                             "its two texts (give each as 'first<TAB>second')")
        texts, pairs = [a for a, _ in split], [b for _, b in split]
    return classifier(texts, pairs, cfg.batch_size)
