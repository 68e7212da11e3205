"""Evaluation on the real SmolLM2-135M with the offline assets (slow: loads the model, reads real data)."""

import pytest

import slimgpt
from slimgpt.eval.perplexity import perplexity_stats
from slimgpt.eval.zeroshot import zeroshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return slimgpt.load_model("smollm2-135m")


def test_wiki_perplexity_is_that_of_a_trained_model(smollm2):
    model, tok = smollm2
    stats = perplexity_stats(model, tok, "wiki", seq_len=128, split="test", max_tokens=2048)
    assert (stats["num_windows"], stats["num_tokens"]) == (16, 16 * 127)
    # a trained model on Wikipedia text, 128-token windows; uniform guessing would give 49152
    assert 5 < stats["ppl"] < 40


def test_piqa_zero_shot_is_above_chance(smollm2):
    model, tok = smollm2
    out = zeroshot(model, tok, ["piqa"], limit=60)
    piqa = out["tasks"]["piqa"]
    assert (piqa["metric"], piqa["n"], piqa["n_total"], piqa["split"]) == ("acc", 60, 1838, "validation")
    assert piqa["value"] > 0.5  # two choices: chance is 0.5
