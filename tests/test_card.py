"""The model card (README.md of a run directory), byte for byte, for representative records: an adapt run
kept by its probe, finetune with one label (per-class results, choices, an early stop), multi-label (LoRA
not merged, remote code, hub data, a learning curve), regression on pairs of long documents, a contrastive
adapt run, and two pretrain runs (from scratch; an existing checkpoint taken as it is).

The records are tests/cards/NAME.json (real runs' records, paths shortened); the cards they give,
tests/cards/NAME.md. Where a change to the card is meant, rewrite them: `python tests/test_card.py`."""

import json
from pathlib import Path

import pytest

from nlptl import card

CARDS = Path(__file__).parent / "cards"
NAMES = sorted(p.stem for p in CARDS.glob("*.json"))


def render(name: str, directory: Path) -> str:
    """The card of tests/cards/NAME.json as `card.write` saves it; `directory` gets the run's files."""
    case = json.loads((CARDS / f"{name}.json").read_text(encoding="utf-8"))
    for file in case["files"]:
        (directory / file).write_text("{}")
    return str(card.build(case["record"], directory, Path("/runs") / name))


def test_the_cases_cover_every_task_shape_and_stage():
    assert {"adapt_probe", "adapt_contrastive", "finetune_single", "finetune_multilabel", "finetune_regression",
            "pretrain_scratch"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_card_of_a_record_is_pinned(name, tmp_path):
    assert render(name, tmp_path) == (CARDS / f"{name}.md").read_text(encoding="utf-8")


def test_write_saves_the_card_as_built(tmp_path):
    case = json.loads((CARDS / "finetune_single.json").read_text(encoding="utf-8"))
    (tmp_path / "config.json").write_text("{}")
    card.write(tmp_path, case["record"], Path("/runs/finetune_single"))
    assert (tmp_path / card.CARD_FILE).read_text(encoding="utf-8") == (CARDS / "finetune_single.md").read_text()


def test_the_template_ships_with_the_package():
    """pyproject.toml's package data takes templates/model_card.md into a built wheel."""
    from fnmatch import fnmatch

    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["nlptl"]
    assert card.TEMPLATE.is_file()
    assert any(fnmatch(card.TEMPLATE.relative_to(card.TEMPLATE.parents[1]).as_posix(), p) for p in patterns)


if __name__ == "__main__":
    import tempfile

    for name in NAMES:
        with tempfile.TemporaryDirectory() as tmp:
            (CARDS / f"{name}.md").write_text(render(name, Path(tmp)), encoding="utf-8")
