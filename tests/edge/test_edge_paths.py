"""The device's data-directory file names are spelt once, in edge_runtime.paths (issue 13)."""

from pathlib import Path

from edge_runtime import paths

# "models" is also the repository's own folder (base_ngram): too generic to police by spelling.
NAMES = [v for k, v in vars(paths).items() if k.isupper() and isinstance(v, str) and v != paths.MODELS_DIR]


def test_no_runtime_module_spells_a_data_dir_name_itself():
    root = Path(paths.__file__).parent
    offenders = [f"{p.name}: {name}" for p in sorted(root.glob("*.py")) if p.name != "paths.py"
                 for name in NAMES if f'"{name}"' in p.read_text(encoding="utf-8")]
    assert offenders == []
