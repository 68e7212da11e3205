"""Config composition: every option of every group, every experiment/sweep/debug file, and clear errors."""

import os
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from slimgpt.runner import specs
from slimgpt.runner.cli import CONF_DIR, TOP_LEVEL_KEYS, build_job, build_spec, compose_config
from slimgpt.runner.loggers import Logger

CONF = CONF_DIR
GROUPS = ("model", "calib", "pruner", "schedule", "finetune", "eval", "export", "logger", "launcher")
FILE_GROUPS = ("experiment", "debug", "sweep")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(*overrides: str, hydra: bool = False, tmp: Path | None = None):
    """Composes conf/config.yaml with ``overrides`` (paths pointed at ``tmp`` when given)."""
    extra = [f"paths.cache={tmp / 'cache'}", f"paths.outputs={tmp / 'out'}"] if tmp else []
    return compose_config([*overrides, *extra], hydra=hydra)


def test_default_config_has_the_groups_as_top_level_keys():
    cfg = compose_cfg()
    assert set(cfg.keys()) == set(TOP_LEVEL_KEYS)
    assert list(cfg.stages) == list(specs.DEFAULT_STAGES)


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_has_options(group):
    assert options(group), f"conf/{group}/ holds no option"


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS if g not in ("logger", "launcher") for o in options(g)]
)
def test_every_spec_option_composes_and_instantiates(group, option):
    spec = build_spec(compose_cfg(f"{group}={option}"), group)
    expected = {"model": specs.ModelSpec, "calib": specs.CalibSpec, "pruner": specs.PrunerSpec,
                "schedule": specs.ScheduleSpec, "finetune": specs.FinetuneSpec, "eval": specs.EvalSpec,
                "export": specs.ExportSpec}[group]
    assert isinstance(spec, expected)


@pytest.mark.parametrize("option", options("logger"))
def test_every_logger_instantiates_without_starting(option):
    logger = instantiate(compose_cfg(f"logger={option}").logger)
    assert isinstance(logger, Logger)


@pytest.mark.parametrize("option", options("launcher"))
def test_every_launcher_names_an_importable_hydra_launcher(option):
    cfg = compose_cfg(f"launcher={option}", hydra=True)
    launcher = get_class(cfg.hydra.launcher._target_)
    assert launcher.__name__.lower().startswith(option.split("_")[0][:5]) or option == "slurm"
    if option == "slurm":
        assert launcher.__name__ == "SlurmLauncher"


def test_eval_both_is_ppl_plus_zeroshot():
    spec = build_spec(compose_cfg("eval=both"), "eval")
    assert spec.perplexity is not None and spec.zeroshot is not None
    assert build_spec(compose_cfg("eval=ppl"), "eval").zeroshot is None
    assert build_spec(compose_cfg("eval=zeroshot"), "eval").perplexity is None


@pytest.mark.parametrize("group", FILE_GROUPS)
def test_every_experiment_debug_and_sweep_file_builds_a_job(group, tmp_path):
    for option in options(group):
        cfg = compose_cfg(f"{group}={option}", tmp=tmp_path)
        job = build_job(cfg, run_dir=tmp_path / "run")
        assert job.run_dir == tmp_path / "run" and job.cache_dir == tmp_path / "cache"


def test_debug_default_is_tiny_and_runs_all_stages(tmp_path):
    job = build_job(compose_cfg("debug=default", tmp=tmp_path), run_dir=tmp_path)
    assert job.model.name == "tiny:llama" and job.calib.num_samples <= 16
    assert job.stages == specs.DEFAULT_STAGES and len(job.finetune.stages) == 1
    assert job.evaluation.zeroshot.limit <= 8


def test_quickstart_is_smollm2_slimgpt_20_log_increase(tmp_path):
    job = build_job(compose_cfg("experiment=quickstart", tmp=tmp_path), run_dir=tmp_path)
    assert (job.model.name, job.pruner.method, job.pruner.ratio, job.schedule.name) == (
        "smollm2-135m", "slimgpt", 0.2, "log_increase")
    assert job.calib.source == "wiki" and job.baseline and job.stages == ("prune", "eval")


@pytest.mark.parametrize("option", options("sweep"))
def test_sweep_files_are_multiruns_over_valid_values_mirrored_by_wandb_sweeps(option, tmp_path):
    params = compose_cfg(f"sweep={option}", hydra=True).hydra.sweeper.params
    base = compose_cfg(f"sweep={option}", tmp=tmp_path)
    assert base.sweep_name == option and params
    for key, values in params.items():  # every swept value is a group option or builds a valid job
        for value in str(values).split(","):
            if key in GROUPS:
                assert value in options(key)
                continue
            cfg = base.copy()
            OmegaConf.update(cfg, key, yaml.safe_load(value))
            build_job(cfg, run_dir=tmp_path)
    agent = yaml.safe_load((CONF.parent / "sweeps" / f"{option}.yaml").read_text())
    assert set(agent["parameters"]) == set(params)
    for key, values in params.items():
        assert [str(v) for v in agent["parameters"][key]["values"]] == str(values).split(",")


def test_sweep_files_switch_to_multirun_mode():
    assert compose_cfg("sweep=ratio_series", hydra=True).hydra.mode.name == "MULTIRUN"


def test_unknown_group_option_lists_the_valid_ones():
    with pytest.raises(ConfigCompositionException, match="Available options") as error:
        compose_cfg("pruner=slimgtp")
    assert "slimgpt" in str(error.value.__cause__ or error.value)


def test_typo_in_a_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="ratoi"):
        compose_cfg("pruner.ratoi=0.3")


def test_unknown_key_inside_a_group_names_the_allowed_keys(tmp_path):
    cfg = compose_cfg("+calib.num_sample=3", tmp=tmp_path)
    with pytest.raises(ValueError, match=r"invalid 'calib' config.*num_sample.*allowed keys.*num_samples"):
        build_job(cfg, run_dir=tmp_path)


def test_unknown_top_level_key_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"unknown top-level config keys \['ratio'\]"):
        build_job(compose_cfg("+ratio=0.3", tmp=tmp_path), run_dir=tmp_path)


@pytest.mark.parametrize(
    "override,message",
    [
        ("pruner.ratio=1.5", r"invalid 'pruner' config: ratio must be in \[0, 1\), got 1.5"),
        ("pruner.ratio=abc", r"invalid 'pruner' config: ratio must be in \[0, 1\), got 'abc'"),
        ("pruner.engine.head_granularity=head", r"unknown head_granularity 'head'; choose one of kv_group"),
        ("+pruner.options.dampp=0.1", r"unknown option\(s\) dampp for method 'slimgpt'; its options are: damp"),
        ("stages=[prune,evaluate]", r"unknown stage 'evaluate'"),
        ("schedule.name=cosine", r"invalid 'schedule' config: unknown schedule 'cosine'; choose one of"),
        ("model.dtype=float8", r"model.dtype='float8' is not one of"),
        ("calib.source=wikki", r"calib.source='wikki' is not one of \['wiki'"),
        ("calib.seq_len=1", r"calib.seq_len=1 must be >= 2"),
        ("eval=zeroshot eval.zeroshot.tasks=[nosuchtask]", r"eval.zeroshot.tasks: unknown task \['nosuchtask'\]"),
        ("calib.num_samples=0", r"calib.num_samples must be a positive number, got 0"),
        ("eval.perplexity.seq_len=-1", r"eval.perplexity.seq_len must be a positive number"),
    ],
)
def test_bad_values_fail_at_start_with_the_value_and_what_is_allowed(override, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        build_job(compose_cfg(*override.split(), tmp=tmp_path), run_dir=tmp_path)


def test_list_entries_of_the_finetune_chain_can_be_overridden(tmp_path):
    job = build_job(compose_cfg("finetune=lora", "finetune.stages.0.train_examples=7", tmp=tmp_path),
                    run_dir=tmp_path)
    assert job.finetune.stages[0].train_examples == 7


def test_debug_sizes_apply_to_the_selected_evaluations_only(tmp_path):
    job = build_job(compose_cfg("debug=default", "eval=ppl", tmp=tmp_path), run_dir=tmp_path)
    assert job.evaluation.zeroshot is None and job.evaluation.perplexity.max_tokens == 2048


@pytest.mark.parametrize("option", options("pruner"))
def test_every_pruner_option_prunes_a_tiny_model_with_its_options(option):
    """The YAML's method, engine and method options build typed objects the engine runs to the target ratio."""
    import dataclasses

    import torch

    import slimgpt
    from slimgpt.pruning.engine import prune_model
    from slimgpt.pruning.schedules import Schedule
    from slimgpt.sources import tiny_model

    spec = build_spec(compose_cfg(f"pruner={option}"), "pruner")
    model = slimgpt.as_slim(tiny_model(num_layers=2))
    calibration = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))  # [4, 32]
    engine = dataclasses.replace(spec.engine, progress=False)
    report = prune_model(model, calibration, spec.ratio, Schedule("uniform"), spec.options, engine, spec.ratio_of)
    assert report.method == spec.method and abs(report.achieved_ratio - spec.ratio) < 0.02
    assert report.method_options == dataclasses.asdict(spec.options)  # the report records the typed options


def test_a_bad_value_on_the_command_line_ends_with_one_line_and_no_traceback(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run([sys.executable, "-m", "slimgpt.runner.cli", "pruner.ratio=abc", f"paths.outputs={tmp_path}"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "slimgpt: invalid 'pruner' config: ratio must be in [0, 1), got 'abc'; "
        "allowed keys: ['method', 'ratio', 'ratio_of', 'engine', 'options']")
