"""Both notebooks, executed top to bottom in a fresh kernel in quick mode on real MNIST,
and the committed copies checked for being fully executed."""

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, needs_mnist

# name -> figures it shows (the last is the study's headline figure); baseline first: the ASAM notebook compares
# against it
NOTEBOOKS = {"LeNet-5.ipynb": 8, "LeNet-5_sam_optim.ipynb": 9}
OUTPUTS = ["checkpoints/lenet5_baseline.pt", "checkpoints/lenet5_asam.pt", "results/baseline.json",
           "results/asam.json", "results/comparison.json"]
FIGURES = ["baseline_training", "baseline_confusion", "baseline_misclassified", "baseline_noise", "asam_training",
           "asam_confusion", "asam_misclassified", "asam_noise", "comparison_noise", "comparison_sharpness"]


def figures(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.outputs)


@needs_mnist
def test_notebooks_run_in_quick_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("LENET_QUICK", "1")
    monkeypatch.setenv("LENET_OUTPUT_DIR", str(tmp_path))
    committed = {p: p.stat().st_mtime_ns for p in ROOT.glob("[cr]*/*") if p.suffix in (".pt", ".json")}
    executed = {}
    for name, n_figures in NOTEBOOKS.items():
        nb = nbformat.read(ROOT / name, as_version=4)
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
        executed[name] = nb
        assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert figures(nb) == n_figures, f"{name} showed {figures(nb)} figures, expected {n_figures}"
        assert "1 CPU thread" in "".join(str(o) for o in nb.cells[2].outputs)  # notebook_setup: one thread
        assert "asam - sgd, paired by seed" in "".join(str(o) for o in nb.cells[-1].outputs)  # ends on the answer
    for path in OUTPUTS + [f"results/figures/{name}.png" for name in FIGURES]:
        assert (tmp_path / path).is_file(), path
    sam_text = "".join(str(o) for c in executed["LeNet-5_sam_optim.ipynb"].cells for o in c.get("outputs", []))
    assert "run LeNet-5.ipynb first" not in sam_text  # the baseline was found: the comparison ran
    assert "largest Hessian eigenvalue" in sam_text
    assert committed == {p: p.stat().st_mtime_ns for p in committed}, "quick mode touched committed results"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_fully_executed(name):
    nb = nbformat.read(ROOT / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run it top to bottom in a fresh kernel"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert figures(nb) == NOTEBOOKS[name]
    assert "0%|" not in "".join(str(o) for c in code for o in c.outputs), "a progress bar saved at 0 %"
    assert "quick mode: False" in "".join(str(o) for o in code[0].outputs), "commit the outputs of a full run"
