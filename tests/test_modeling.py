import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

import slimgpt
from slimgpt.sources import tiny_model


def test_as_slim_computes_the_same_function(family):
    dense = tiny_model(family)
    ids = torch.randint(0, 256, (2, 24))
    slim = slimgpt.as_slim(dense)
    assert isinstance(slim, slimgpt.SlimGPTForCausalLM)
    torch.testing.assert_close(slim(ids).logits, dense(ids).logits, rtol=0, atol=0)


def test_uneven_kv_map_equals_dense_attention_with_duplicated_kv_heads():
    """Query heads reading arbitrary kv heads == a dense layout where those kv heads are copied."""
    dense = slimgpt.as_slim(tiny_model("llama", heads=4, kv_heads=2))
    attn = dense.model.layers[0].self_attn
    hd = attn.head_dim
    ids = torch.randint(0, 256, (1, 12))
    # Make kv head 1 equal to kv head 0 and remap heads 2,3 onto kv head 0: output must not change.
    with torch.no_grad():
        for proj in (attn.k_proj, attn.v_proj):
            proj.weight[hd:] = proj.weight[:hd]
    before = dense(ids).logits
    attn.set_heads([0, 0, 0, 0], 1)
    with torch.no_grad():
        for proj in (attn.k_proj, attn.v_proj):
            proj.weight = torch.nn.Parameter(proj.weight[:hd].clone())
    attn.set_heads([0, 0, 1, 0], 2)  # uneven map with a duplicated kv head
    with torch.no_grad():
        for proj in (attn.k_proj, attn.v_proj):
            proj.weight = torch.nn.Parameter(torch.cat([proj.weight, proj.weight]))
    torch.testing.assert_close(dense(ids).logits, before)


def test_save_load_both_paths(tmp_path, family):
    model = slimgpt.as_slim(tiny_model(family))
    ids = torch.arange(20)[None]
    expected = model(ids).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
    code = (
        "import torch, sys\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained(r'{tmp_path}', trust_remote_code=True)\n"
        "assert 'slimgpt' not in sys.modules\n"
        "torch.save(m(torch.arange(20)[None]).logits, sys.argv[1])\n"
    )
    out = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(out), expected, rtol=0, atol=0)


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    try:
        slimgpt.as_slim(model)
    except ValueError as err:
        assert "gpt2" in str(err) and "llama" in str(err)
    else:
        raise AssertionError("gpt2 must be refused")
