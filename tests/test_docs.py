"""docs/configuration.md is generated from src/cmae/config.py (scripts/config_reference.py) and kept current;
README.md stays short, every docs/ page exists, and every relative link in README and docs/ resolves."""

import importlib.util
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "config_reference.py"


def load_script():
    spec = importlib.util.spec_from_file_location("config_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_is_current():
    reference = load_script()
    assert reference.OUTPUT.read_text() == reference.render(), \
        "docs/configuration.md is stale: run python scripts/config_reference.py"


def test_the_reference_lists_every_key_with_its_comment_and_range(tmp_path, monkeypatch):
    from cmae.config import Config

    reference = load_script()
    text = reference.render()
    for section, values in Config().to_dict().items():
        for key in values:
            assert f"| `{section}.{key}` |" in text
    # a comment beside the field, one above it, a base class's, a range rule and Literal choices
    assert "| `data.num_frames` | int | `16` | > 0 | frames per clip fed to the encoder (1 for image MAE) |" in text
    assert "target clip = online clip shifted by delta ~ U{0..max_shift} frames" in text
    assert "| `finetune.accum_steps` | int | `1` | > 0 | micro-batches per optimiser step, each batch_size / " in text
    assert "| `finetune.batch_size` | int | `0` | >= 0 | global batch over all processes and accumulation steps; 0: " \
        in text
    assert "| `method.masking` | choice | `auto` | `auto`, `tube`, `random` |" in text
    stale = tmp_path / "configuration.md"
    stale.write_text(text + "one more line\n")
    monkeypatch.setattr(reference, "OUTPUT", stale)
    assert reference.main(["--check"]) == 1
    stale.write_text(text)
    assert reference.main(["--check"]) == 0


ROOT = Path(__file__).resolve().parents[1]
PAGES = ["getting-started", "methods", "evaluation", "data", "scaling", "interop", "design", "results", "configuration"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks and indented code."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced and not line.startswith("    "):
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-',
    a repeated heading numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    for line in prose_lines(path):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def test_readme_is_at_most_250_lines_and_every_docs_page_exists():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    missing = [page for page in PAGES if not (ROOT / "docs" / f"{page}.md").is_file()]
    assert not missing, missing


def test_every_relative_link_points_to_an_existing_file_and_anchor():
    broken = []
    for path in markdown_files():
        for line in prose_lines(path):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                    continue
                file, _, anchor = target.partition("#")
                linked = (path.parent / file).resolve() if file else path
                if not linked.exists():
                    broken.append(f"{path.name}: {target} (no such file)")
                elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                    broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, broken
