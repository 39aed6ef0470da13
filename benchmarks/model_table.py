"""Print the README's model table: parameters and multiply-adds beside the paper's figures.

Multiply-adds are those of the convolutions and the fully-connected layer (Table 1's count), summed exactly
over the traced forward pass (``resnet_jax.models.multiply_adds``); nothing is compiled.

    python benchmarks/model_table.py [--output=models.json]
"""

import argparse
import json

from resnet_jax.models import MODELS, abstract_variables, count_params, create_model, list_models, multiply_adds

# Paper: Table 1 (multiply-adds x10^9, 224x224) and Table 6 (CIFAR-10 parameters).
PAPER = {"resnet18": "1.8", "resnet34": "3.6", "resnet50": "3.8", "resnet101": "7.6", "resnet152": "11.3",
         "plain18": "1.8", "plain34": "3.6", "cifar_resnet20": "0.27M", "cifar_resnet32": "0.46M",
         "cifar_resnet44": "0.66M", "cifar_resnet56": "0.85M", "cifar_resnet110": "1.7M",
         "cifar_resnet1202": "19.4M"}


def layers(name: str) -> int:
    fields = MODELS[name]
    per_block = 3 if fields.get("bottleneck") else 2
    return per_block * sum(fields["stage_sizes"]) + 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", help="write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    print("| model | layers | params | multiply-adds | paper |")
    print("|---|---|---|---|---|")
    for name in sorted(list_models(), key=lambda n: (n.startswith("cifar"), "plain" in n, layers(n))):
        model = create_model(name)
        size = 32 if name.startswith("cifar") else 224
        row = dict(model=name, layers=layers(name), image_size=size,
                   params=count_params(abstract_variables(model, size)["params"]),
                   multiply_adds=multiply_adds(model, size), paper=PAPER.get(name, ""))
        rows.append(row)
        print(f"| `{name}` | {row['layers']} | {row['params'] / 1e6:.2f}M | "
              f"{row['multiply_adds'] / 1e9:.2f}G ({size}²) | {row['paper']} |", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
