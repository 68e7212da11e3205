"""Evidence for the Figure 2 README: how much of each layer's output norm ‖y‖² sits in a few hidden channels.

If one or two channels ("massive activations") carry most of ‖y_dense‖², the relative output error
‖y - y_dense‖² / ‖y_dense‖² the engine reports is dominated by them, and flattens where they appear.

    python experiments/fig2_first_layer/activation_norms.py --samples 4 --seq-len 256

Prints a markdown table: per layer, ‖y‖² per token and the share of the top-1 and top-3 channels.
"""

import argparse

import torch

import slimgpt


def channel_shares(hidden: torch.Tensor, top: int) -> float:
    """Share of ``Σ y²`` carried by the ``top`` channels with the largest energy; ``hidden: [n, T, d]``."""
    energy = hidden.float().pow(2).sum(dim=(0, 1))  # [d]
    return float(energy.topk(top).values.sum() / energy.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    model, tokenizer = slimgpt.load_model(args.model)
    tokens = slimgpt.calibration_data("wiki", tokenizer, args.samples, args.seq_len, seed=0)  # [n, T]
    with torch.no_grad():
        states = model(tokens, output_hidden_states=True).hidden_states  # (n_layers + 1) × [n, T, d]
    print("| layer | ‖y‖² per token | top-1 channel share | top-3 share |\n|---|---|---|---|")
    for i, hidden in enumerate(states[1:]):  # states[0] is the embedding output
        per_token = float(hidden.float().pow(2).sum() / (hidden.shape[0] * hidden.shape[1]))
        print(f"| {i} | {per_token:.4g} | {channel_shares(hidden, 1):.3f} | {channel_shares(hidden, 3):.3f} |")


if __name__ == "__main__":
    main()
