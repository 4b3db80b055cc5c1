# Course setup: the same first cell in every notebook (a test checks it). On your machine, after
# `make setup`, it only imports; in Google Colab it fetches the course and what Colab lacks first.
import os, subprocess, sys
COURSE_REPO = "https://github.com/llm-internals/llm-internals"  # the one place this URL lives
COURSE_REF = "main"  # the branch or tag Colab clones (README, "For maintainers")
if "google.colab" in sys.modules:
    course = os.path.join(os.environ.get("LLM_COURSE_HOME", "/content"), "llm-internals")
    if not os.path.isdir(course):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", COURSE_REF, COURSE_REPO, course], check=True)
    if course not in sys.path:
        sys.path.insert(0, course)
    from utils.colab import install_missing_requirements  # standard library only
    install_missing_requirements(f"{course}/requirements.txt")  # never reinstalls torch; no jupyterlab
    from google.colab import output
    output.enable_custom_widget_manager()  # ipywidgets 8 in Colab
    os.chdir(f"{course}/notebooks")
try:
    import utils.runtime  # first, before torch: torch's threads then sleep while they wait
except ImportError as exc:
    raise ImportError("The course package `utils` is not importable: run `make setup` and pick the "
                      "kernel of the course's .venv (or open the notebook in Colab).") from exc
