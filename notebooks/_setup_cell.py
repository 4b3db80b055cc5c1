# Course setup: the same first cell in every notebook (a test checks it). On your machine, after
# `make setup`, it only imports; in Google Colab it fetches the course and its requirements first.
import os, subprocess, sys
COURSE_REPO = "https://github.com/llm-internals/llm-internals"  # the one place this URL lives
if "google.colab" in sys.modules:
    if not os.path.isdir("/content/llm-internals"):
        subprocess.run(["git", "clone", "-q", "--depth", "1", COURSE_REPO, "/content/llm-internals"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "/content/llm-internals/requirements.txt"], check=True)
    sys.path.insert(0, "/content/llm-internals")
    os.chdir("/content/llm-internals/notebooks")
try:
    import utils
except ImportError as exc:
    raise ImportError("The course package `utils` is not importable: run `make setup` and pick the "
                      "kernel of the course's .venv (or open the notebook in Colab).") from exc
