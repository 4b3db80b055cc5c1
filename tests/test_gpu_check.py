"""benchmarks/gpu_check.sh and the scripts it runs (execute_notebook.py, moe_autocast_check.py,
minilm_device_check.py): the GPU run's tools, checked on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import torch

ROOT = Path(__file__).resolve().parent.parent


def test_execute_notebook_runs_every_cell_and_lists_each_failing_one(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# a title"),
                nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("1 / 0"),
                nbformat.v4.new_code_cell("print('after the error', x + 1)"),
                nbformat.v4.new_code_cell("undefined_name")]
    src, dst = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "execute_notebook.py"), str(src), str(dst)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert "cell 2: ZeroDivisionError: division by zero" in lines
    assert "cell 4: NameError: name 'undefined_name' is not defined" in lines
    assert lines[-1].startswith("in.ipynb: 2 failing cells, ")
    executed = nbformat.read(dst, as_version=4)
    assert executed.cells[3].outputs[0]["text"] == "after the error 2\n"  # cells after an error still ran


def test_execute_notebook_returns_0_when_no_cell_fails(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(6 * 7)")]
    src = tmp_path / "ok.ipynb"
    nbformat.write(nb, src)
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "execute_notebook.py"), str(src),
                          str(tmp_path / "ok_out.ipynb")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0
    assert run.stdout.splitlines()[-1].startswith("ok.ipynb: 0 failing cells, ")


def test_gpu_check_script_parses_and_asks_for_an_output_folder():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode != 0
    assert "set OUT to a folder for the results" in run.stderr


def test_gpu_bundle_script_parses_and_names_a_package_it_cannot_pin(tmp_path):
    script = ROOT / "benchmarks" / "gpu_bundle.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "PY": "false", "DEST": str(tmp_path / "whl")})
    assert run.returncode != 0
    assert "nbval is not installed in false's environment: run make setup first" in run.stderr
    assert not any((tmp_path / "whl").iterdir())  # nothing downloaded


def test_execute_notebook_names_its_arguments_when_they_are_wrong(tmp_path):
    script = str(ROOT / "benchmarks" / "execute_notebook.py")
    for args in ([], [str(tmp_path / "missing.ipynb"), str(tmp_path / "out.ipynb")]):
        run = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=60)
        assert run.returncode == 1
        assert "usage: python execute_notebook.py NOTEBOOK.ipynb OUTPUT.ipynb (the notebook must exist" in run.stderr


def _bench(name: str, *args: str) -> subprocess.CompletedProcess:
    """Run benchmarks/NAME with this Python; output captured."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                          timeout=300)


def _refuses_a_missing_gpu(name: str) -> None:
    if not torch.cuda.is_available():
        no_gpu = _bench(name, "--device", "cuda")
        assert no_gpu.returncode == 2 and "no CUDA GPU is visible" in no_gpu.stderr


def test_moe_autocast_check_passes_on_the_cpu_and_fails_when_the_tolerance_is_below_bf16(tmp_path):
    out = tmp_path / "a.json"
    run = _bench("moe_autocast_check.py", "--experts", "8", "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    table = json.loads(out.read_text())
    assert table["resolved"] == "grouped_mm"  # the CPU rule: bf16 rows of 192 and 256 are multiples of 16 bytes
    assert {r["tensor"] for r in table["rows"]} >= {"output", "input grad", "grad router.weight", "grad experts.w_in"}
    assert all(0 < r["auto_bf16_vs_fp32"] < 0.05 for r in table["rows"])  # bf16 differs from fp32, but a little
    strict = _bench("moe_autocast_check.py", "--experts", "8", "--tol", "1e-4")
    assert strict.returncode == 1 and "ABOVE --tol" in strict.stdout
    _refuses_a_missing_gpu("moe_autocast_check.py")


def test_minilm_device_check_agrees_with_sentence_transformers_on_the_cpu_and_refuses_a_missing_gpu(tmp_path):
    out = tmp_path / "m.json"
    run = _bench("minilm_device_check.py", "--device", "cpu", "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    table = json.loads(out.read_text())
    assert table["within_tol"] and table["cpu"]["ours_vs_sentence_transformers"] < 1e-5
    assert 0.9 < table["cpu"]["cos_paraphrase"] and table["cpu"]["cos_unrelated"] < 0.5  # notebook 08's two cosines
    strict = _bench("minilm_device_check.py", "--device", "cpu", "--tol", "-1")
    assert strict.returncode == 1 and '"within_tol": false' in strict.stdout
    _refuses_a_missing_gpu("minilm_device_check.py")
