"""The slimgpt+ study table (experiments/slimgpt_plus/table.py) on tiny runs: ratios against the faithful
slimgpt of the same model, calibration and ratio, and a redraw from the records it keeps (no sweep folders)."""

import importlib.util
import shutil
from pathlib import Path

import pytest

from slimgpt.runner.cli import build_job, compose_config
from slimgpt.runner.loggers import NoneLogger
from slimgpt.runner.pipeline import run_job

TABLE = Path(__file__).resolve().parent.parent / "experiments" / "slimgpt_plus" / "table.py"
SMOKE = ["experiment=slimgpt_plus", "debug=default", "schedule=uniform", "pruner.ratio=0.3"]


def load_table():
    spec = importlib.util.spec_from_file_location("slimgpt_plus_table", TABLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The faithful slimgpt and slimgpt+ (query heads, exact score, schedule ratios), 30% of the layers."""
    tmp = tmp_path_factory.mktemp("plus_table")
    for index, pruner in enumerate(["pruner=slimgpt", "pruner=slimgpt_plus"]):
        overrides = [pruner, "pruner.ratio_of=layers", "pruner.options.layer_ratios=schedule"][: 2 + index]
        cfg = compose_config([*SMOKE, *overrides, f"paths.cache={tmp / 'cache'}", f"paths.outputs={tmp}"])
        run_job(build_job(cfg, run_dir=tmp / "runs" / str(index), overrides=tuple(overrides)), NoneLogger())
    return tmp


def test_rows_compare_each_variant_with_the_faithful_slimgpt_and_redraw_from_kept_records(runs, tmp_path):
    table = load_table()
    out = tmp_path / "study"
    assert table.main([str(runs / "runs"), "--out", str(out)]) == 0
    text = (out / "slimgpt_plus.md").read_text()
    lines = [line for line in text.split("\n\n")[0].splitlines()[2:]]
    assert len(lines) == 2 and all("| 30% of layers |" in line for line in lines)
    plain = next(line for line in lines if "| slimgpt |" in line)
    plus = next(line for line in lines if "| slimgpt +query_head +exact |" in line)
    assert plain.rstrip(" |").endswith("| 1 | 1")
    ppl = [float(plus.split(" | ")[k]) / float(plain.split(" | ")[k]) for k in (5, 6)]  # wiki, lambada
    assert ppl == pytest.approx([float(c) for c in plus.strip(" |").split(" | ")[-2:]], abs=2e-3)
    assert (out / "slimgpt_plus_ppl.png").stat().st_size > 0 and len(list((out / "records").iterdir())) == 2
    moved = tmp_path / "copy"
    shutil.copytree(out, moved)
    assert table.main([str(moved / "records"), "--out", str(moved)]) == 0
    assert (moved / "slimgpt_plus.md").read_text().split("\n\n")[0] == text.split("\n\n")[0]
