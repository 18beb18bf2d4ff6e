"""docs/configuration.md is generated from src/cmae/config.py (scripts/config_reference.py) and kept current."""

import importlib.util
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
    assert "| `finetune.batch_size` | int | `1024` | > 0 | global batch over all processes and accumulation steps |" \
        in text
    assert "| `method.masking` | choice | `auto` | `auto`, `tube`, `random` |" in text
    stale = tmp_path / "configuration.md"
    stale.write_text(text + "one more line\n")
    monkeypatch.setattr(reference, "OUTPUT", stale)
    assert reference.main(["--check"]) == 1
    stale.write_text(text)
    assert reference.main(["--check"]) == 0
