"""Every paper study (conf/experiment/paper_*.yaml × conf/sweep/paper_*.yaml) composes and runs end to end
in smoke mode (``debug=default``: tiny random model, tiny data), its sweep points included, and
``slimgpt-figures`` turns the results into a table and PNG figures. The plot functions draw real PNGs.
"""

import ast
import itertools
import json
from pathlib import Path

import pytest

from slimgpt import plots, studies
from slimgpt.runner.summary import load_records
from slimgpt.runner.cli import CONF_DIR, build_job, compose_config
from slimgpt.runner.loggers import NoneLogger
from slimgpt.runner.pipeline import run_job
from slimgpt.runner.record import RunRecord
from slimgpt.runner.results import write_json_atomic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: study -> (experiment, sweeps, slimgpt.studies study, PNGs it must draw)
STUDIES = {
    "fig2": ("paper_fig2", ["paper_fig2"], "fig2", ["fig2_layer_error.png"]),
    "table6": ("paper_table6", ["paper_table6"], "table6",
               ["fig4_layer_ratios.png", "table6_layer_error.png", "table6_ppl.png"]),
    "ablation": ("paper_ablation", ["paper_ablation"], "ablation", ["ablation_ppl.png"]),
    "table1": ("paper_table1", ["paper_table1"], "table1", ["table1_ppl.png"]),
    "fig3": ("paper_fig3", ["paper_fig3_samples", "paper_fig3_seqlen"], "fig3",
             ["fig3_samples_ppl.png", "fig3_seq_len_ppl.png", "fig3_samples_zeroshot.png"]),
}
#: Smoke mode: debug=default (tiny model, tiny data) with perplexity only...
SMOKE = ["debug=default", "eval=ppl"]
#: ...except the sweeps that also exercise the zero-shot path (debug's one task, 4 questions).
WITH_ZEROSHOT = {"paper_fig3_samples"}
#: Per-study smoke extras: the tiny model's embeddings are a larger share of its parameters, so Table 1's
#: 50% of total needs ≈80% of the last layers under log-increase; a flat schedule keeps every value feasible.
#: Table 6's 50% of the decoder layers needs ≈85% of the tiny model's last layer under the linear schedules
#: (4 layers of 2 KV groups): the smoke run uses a quarter instead.
SMOKE_EXTRA = {"table1": ["schedule=uniform"], "table6": ["pruner.ratio=0.25"]}
#: Recovery values of the sweeps swapped for the tiny model's few-step LoRA (same code path, seconds).
SMOKE_SWAP = {"finetune=lora_cpu": "finetune=lora_tiny"}


def sweep_axes(sweep: str) -> list[list[str]]:
    """Per swept key, its ``key=value`` overrides, from the sweep file's ``hydra.sweeper.params``."""
    params = compose_config([f"sweep={sweep}"], hydra=True).hydra.sweeper.params
    return [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]


def sweep_points(sweep: str) -> list[list[str]]:
    """The override lists of every job of ``sweep`` (Hydra's basic sweeper: the cartesian product)."""
    return [list(point) for point in itertools.product(*sweep_axes(sweep))]


def covering_points(sweep: str) -> list[list[str]]:
    """A few jobs of ``sweep`` in which every value of every axis occurs at least once (smoke runs)."""
    axes = sweep_axes(sweep)
    return [[axis[i % len(axis)] for axis in axes] for i in range(max(map(len, axes)))]


def run_point(overrides: list[str], tmp: Path, index: int) -> Path:
    """Composes and runs one job in-process (logger none); returns its run folder."""
    run_dir = tmp / "runs" / str(index)
    cfg = compose_config([*overrides, f"paths.cache={tmp / 'cache'}", f"paths.outputs={tmp / 'out'}"])
    sweep_name = str(cfg.sweep_name)
    job = build_job(cfg, run_dir=run_dir, group=sweep_name, overrides=tuple(overrides))
    run_job(job, NoneLogger())
    return run_dir


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_every_paper_study_runs_in_smoke_mode_and_draws_its_figures(study, tmp_path):
    experiment, sweeps, figure_study, pngs = STUDIES[study]
    index = 0
    for sweep in sweeps:
        smoke = (["debug=default"] if sweep in WITH_ZEROSHOT else SMOKE) + SMOKE_EXTRA.get(study, [])
        for point in covering_points(sweep):
            point = [SMOKE_SWAP.get(override, override) for override in point]
            run_dir = run_point([f"experiment={experiment}", f"sweep={sweep}", *smoke, *point], tmp_path, index)
            record = RunRecord.load(run_dir / "results.json")
            assert record.status == "done"
            methods = [o.split("=")[1] for o in point if o.startswith("pruner=")]
            assert record.prune.value("method") == (methods[0] if methods else "slimgpt")
            index += 1
    out = tmp_path / "figures"
    table = studies.make_study(figure_study, [tmp_path / "runs"], out)
    assert "Scaled: tiny" in table and (out / f"{figure_study}.md").is_file()
    for png in pngs:
        assert (out / png).read_bytes()[:8] == PNG_MAGIC, png


def test_fig2_prunes_only_layer_zero_and_reports_the_error_of_every_layer(tmp_path):
    run_dir = run_point(["experiment=paper_fig2", *SMOKE], tmp_path, 0)
    prune = RunRecord.load(run_dir / "results.json").prune
    ratios = prune.layer_values("achieved_ratio")
    assert ratios[0] > 0 and all(ratio == 0 for ratio in ratios[1:])
    errors = prune.layer_values("output_error")
    assert all(e is not None and e > 0 for e in errors)  # the error of layer 0 propagates to every later layer


def test_table6_schedules_spend_the_same_budget_differently(tmp_path):
    reports = {}
    for index, schedule in enumerate(("log_increase", "log_decrease")):
        run_dir = run_point(["experiment=paper_table6", *SMOKE, f"schedule={schedule}"], tmp_path, index)
        reports[schedule] = RunRecord.load(run_dir / "results.json").prune
    up, down = (reports[s].layer_values("target_ratio") for s in ("log_increase", "log_decrease"))
    assert up[0] < up[-1] and down[0] > down[-1]
    assert reports["log_increase"].value("achieved_ratio") == pytest.approx(
        reports["log_decrease"].value("achieved_ratio"), abs=0.03)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("paper_*llama7b.yaml")))
def test_llama7b_variants_point_at_the_hub_model_and_the_paper_protocol(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}", f"paths.cache={tmp_path}"])
    job = build_job(cfg, run_dir=tmp_path)
    assert job.model.name == "huggyllama/llama-7b" and job.model.device == "cuda"
    assert job.calib.source == "c4" and job.calib.seq_len == 2048
    assert job.evaluation.perplexity.max_tokens is None and "wikitext2" in job.evaluation.perplexity.corpora


@pytest.mark.parametrize("experiment, sweep", [("paper_table1", "paper_table1"),
                                               ("paper_table1_llama7b", "paper_table1_llama7b")])
def test_table1_recovery_axis_gives_untuned_and_tuned_rows(experiment, sweep, tmp_path):
    """The sweep's ``finetune`` values decide the recovery; the experiment must not override them."""
    stages = {}
    for override in sweep_axes(sweep)[-1]:
        cfg = compose_config([f"experiment={experiment}", override, f"paths.cache={tmp_path}"])
        stages[override] = build_job(cfg, run_dir=tmp_path).finetune.stages
    untuned, tuned = stages.values()
    assert list(stages)[0] == "finetune=none" and untuned == () and len(tuned) == 1


def test_fig2_ratios_are_the_requested_shares_of_layer_zero():
    """The sweeps remove 25/50/75% of layer 0: SmolLM2-135M's as total ratios (3,538,944 of 134,515,008, the
    measured values), LLaMA-7B's as shares of the pruned layers (ratio_of: layers)."""
    ratios = [float(p[0].split("=")[1]) for p in sweep_points("paper_fig2")]
    assert [round(r * 134_515_008 / 3_538_944, 4) for r in ratios] == [0.25, 0.5, 0.75]
    ratios = [float(p[0].split("=")[1]) for p in sweep_points("paper_fig2_llama7b")]  # ratio_of: layers
    assert ratios == [0.25, 0.5, 0.75]


def test_plot_functions_write_png_files(tmp_path):
    paths = [
        plots.plot_layer_curves({"a": [1e-3, 1e-2, None, 0.1]}, tmp_path / "curves.png", ylabel="err", logy=True,
                                caption="caption"),
        plots.plot_layer_curves({"a": [0.1, 0.2], "b": [0.2, 0.1]}, tmp_path / "steps.png", ylabel="r", steps=True),
        plots.plot_bars({"x": 3.0, "y": 30.0}, tmp_path / "bars.png", ylabel="ppl", logy=True, reference=2.0),
        plots.plot_bars({"x": 0.5, "y": 0.4}, tmp_path / "errors.png", ylabel="acc", errors={"y": 0.03, "x": 0.02}),
        plots.plot_xy({"s": ([64, 16, 32], [3.0, 5.0, 4.0])}, tmp_path / "xy.png", xlabel="n", ylabel="ppl", logx=True),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.png", "curves.png", "errors.png", "steps.png", "xy.png"]


@pytest.mark.parametrize("call, message", [
    (lambda p: plots.plot_bars({}, p / "a.png", ylabel="y"), "no data"),
    (lambda p: plots.plot_layer_curves({"a": []}, p / "a.png", ylabel="y"), "'a' is empty"),
    (lambda p: plots.plot_xy({"s": ([1, 2], [1])}, p / "a.png", xlabel="x", ylabel="y"), "2 x values but 1"),
    (lambda p: plots.plot_bars({"a": 1.0}, p / "a.pdf", ylabel="y"), "PNG"),
    (lambda p: plots.plot_bars({"a": 1.0, "b": 2.0}, p / "a.png", ylabel="y", errors={"a": 0.1}), "one per bar"),
])
def test_plot_functions_reject_bad_input_with_a_clear_message(call, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        call(tmp_path)


def test_ablation_table_summarises_calibration_seeds(tmp_path):
    """Repeats of a variant with other calibration seeds are rows of their own plus a mean/min/max line."""
    ppls = []
    for seed in (0, 1):
        run_dir = run_point(["experiment=paper_ablation", *SMOKE, f"calib.seed={seed}"], tmp_path, seed)
        ppls.append(RunRecord.load(run_dir / "results.json").metric("ppl/wiki"))
    assert ppls[0] != ppls[1]  # another calibration draw prunes differently
    table = studies.make_study("ablation", [tmp_path / "runs"], tmp_path / "figures")
    summary = table.split("over calibration seeds")[1].splitlines()[4]
    cells = [c.strip() for c in summary.strip("|").split("|")]
    assert cells[2] == "2" and float(cells[3]) == pytest.approx(sum(ppls) / 2, rel=1e-3)
    assert float(cells[4]) == pytest.approx(min(ppls), rel=1e-3)
    assert float(cells[5]) == pytest.approx(max(ppls), rel=1e-3)


@pytest.mark.parametrize("notebook", sorted((CONF_DIR.parent / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_stripped_and_hold_no_logic(notebook):
    """Notebooks only load results and draw them with slimgpt.studies / slimgpt.plots: outputs stripped,
    no functions or classes of their own, every code cell valid Python."""
    cells = json.loads(notebook.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code, "a notebook without code"
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None
        tree = ast.parse("".join(cell["source"]))
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda)) for n in ast.walk(tree))


def test_figures_load_each_evaluated_model_once(tmp_path):
    """A job repeated in a second sweep folder (served from the run cache) is one row, not two."""
    record = {"status": "done", "evaluations": [{"role": "final", "key": "k1", "model": "slimgpt", "metrics": {}}]}
    for folder in ("a/0", "b/0"):
        (tmp_path / folder).mkdir(parents=True)
        write_json_atomic(tmp_path / folder / "results.json", record)
    failed = {"status": "failed", "evaluations": [{"role": "final", "key": "k2", "model": "slimgpt", "metrics": {}}]}
    write_json_atomic(tmp_path / "c" / "0" / "results.json", failed)
    assert len(load_records([tmp_path])) == 1


def test_slimgpt_figures_names_the_bad_study_and_an_empty_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        studies.main(["table9", str(tmp_path), "--out", str(tmp_path)])
    assert "invalid choice: 'table9'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        studies.main(["fig2", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "no finished results.json" in capsys.readouterr().err
