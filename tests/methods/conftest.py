"""Real images for the method tests: scikit-image's coins photograph, nilearn's MNI152 T1 with its white-matter map,
and the Decathlon spleen CT of ``../shared/data`` (skipped when absent)."""

from __future__ import annotations

import pytest
from methods_helpers import Case, coins_case, mni_wm_case, spleen_case


@pytest.fixture(scope="session")
def coins() -> Case:
    """The coins photograph (left half) and its mask."""
    return coins_case()


@pytest.fixture(scope="session")
def coins_full() -> Case:
    """The whole coins photograph (303×384) and its mask: left half to train, right half to test."""
    return coins_case(full=True)


@pytest.fixture(scope="session")
def mni_wm() -> Case:
    """MNI152 T1 at 2 mm, 32³, white matter."""
    return mni_wm_case()


@pytest.fixture(scope="session")
def spleen() -> Case:
    """Spleen CT block (skips without ../shared/data)."""
    return spleen_case()


@pytest.fixture(scope="session")
def mni_dataset_plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The training tests' MNI white-matter dataset (48³ at 2 mm) with its 3d_fullres plans, loaded."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "training" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_medseg_training_conftest_methods", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dataset = module.write_mni_dataset(tmp_path_factory.mktemp("mni_methods"))
    dataset["plans_path"] = dataset["plans"]
    dataset["plans"] = json.loads(Path(dataset["plans"]).read_text())
    dataset["tiny"] = list(module.TINY)
    return dataset
