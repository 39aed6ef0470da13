"""Every command in the README works as written, as far as it can offline: each `python` command names a module or
script that exists, every flag it passes is one that command takes, configs and models resolve, and the studies'
commands parse. (Running them needs data and time; the commands' own tests run them at toy sizes.)"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_jax import configs, models

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train.py": "resnet_jax.train", "evaluate.py": "resnet_jax.evaluate"}


def readme_commands() -> list[list[str]]:
    """The ``python`` commands of the README's bash blocks (continuation lines joined, ``[optional]`` parts
    unwrapped, comments dropped) and of its inline code."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#.*$", "", line.split(" # ")[0]) if not line.startswith("#") else ""
            for part in line.split("&&"):
                words = shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", part))
                if words and words[0] in ("python", "python3"):
                    commands.append(words)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return commands + [shlex.split(c) for c in re.findall(r"`(python -m [^`]+)`", text)]


def module_of(words: list[str]) -> str:
    return words[2] if words[1] == "-m" else SCRIPTS[words[1]]


def test_the_readme_has_its_commands_and_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    modules = {module_of(c) for c in readme_commands() if c[1] != "-c"}
    assert {"resnet_jax.train", "resnet_jax.evaluate", "resnet_jax.convert", "resnet_jax.reproduce", "pytest",
            "resnet_jax.doctor"} <= modules


def test_the_readme_train_commands_name_real_configs_models_and_fields():
    trains = [c for c in readme_commands()
              if module_of(c) == "resnet_jax.train" and any(w.startswith("--config=") for w in c)]
    assert len(trains) >= 3
    for words in trains:
        spec = next(w.split("=", 1)[1] for w in words if w.startswith("--config="))
        path, _, model = configs.resolve(spec).partition(":")
        assert Path(path).is_file(), spec
        assert model in models.MODELS, spec
        namespace: dict = {}
        exec(compile(Path(path).read_text(), path, "exec"), namespace)
        config = namespace["get_config"](model)
        for w in words:
            if w.startswith("--config.") and "<" not in w:
                field = w[len("--config."):].split("=", 1)[0]
                assert field in config, f"{w}: the config has no field {field}"


def test_the_readme_study_and_evaluation_commands_parse():
    import argparse

    from resnet_jax import evaluate, reproduce

    for words in readme_commands():
        module, args = module_of(words), words[3 if words[1] == "-m" else 2:]
        if module == "resnet_jax.evaluate":
            args = [a for a in args if "|" not in a]  # choices written as a|b|c
            evaluate.parse([a.replace("...", "x") for a in args])
        elif module == "resnet_jax.reproduce":
            p = argparse.ArgumentParser()
            study, _ = reproduce.STUDIES[args[0]]
            study.add_arguments(p)
            p.parse_args(args[1:])


@pytest.mark.parametrize("module", ["resnet_jax.convert", "resnet_jax.doctor"])
def test_the_readme_flags_of_other_commands_are_theirs(module):
    used = {w.split("=", 1)[0] for c in readme_commands() if module_of(c) == module for w in c if w.startswith("--")}
    assert used, module
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for flag in used:
        assert flag in done.stdout, f"{module} has no {flag}"


def github_anchor(heading: str) -> str:
    """The ``#anchor`` GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]{2,}|`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_the_links_of_the_readme_and_docs_lead_somewhere(page):
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links or page != "README.md"
    for link in links:
        if re.match(r"[a-z]+:", link):  # http(s):, mailto:
            continue
        target, _, anchor = link.partition("#")
        target_path = (path.parent / target).resolve() if target else path
        assert target_path.exists(), f"{page}: {link} leads to no file"
        if anchor:
            assert anchor in anchors(target_path), f"{page}: {link} names no heading of {target_path.name}"
