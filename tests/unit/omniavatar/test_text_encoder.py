"""The UMT5 text encoder: prompt cleaning, 512 rows with padded rows zeroed, agreement with Wan's T5."""

from __future__ import annotations

from model.omniavatar.text_encoder import clean_prompt

from .helpers import max_diff
from .reference import reference_umt5


def test_clean_prompt_fixes_text_unescapes_twice_and_collapses_whitespace():
    cleaned = clean_prompt("  A  man\n\tspeaks &amp;amp; smiles  ")
    assert cleaned == "A man speaks & smiles", f"expected 'A man speaks & smiles', found {cleaned!r}"
    fixed = clean_prompt("The man\u00e2\u20ac\u2122s voice")  # mojibake of a curly apostrophe
    assert fixed == "The man's voice", f"expected ftfy to repair the mojibake (and uncurl it), found {fixed!r}"
    assert clean_prompt("Keep Case") == "Keep Case", "cleaning must not lower-case"


def test_context_has_text_len_rows_and_zero_padding(tiny_models):
    encoder = tiny_models.text_encoder
    prompts = ["A realistic video of a man speaking.", "smiles"]
    context = encoder.encode(prompts)
    assert context.shape == (2, 512, 32), f"expected (2, 512, 32), found {tuple(context.shape)}"
    for row, prompt in enumerate(prompts):
        n = len(encoder.tokenizer(clean_prompt(prompt)).input_ids)  # tokens incl. EOS
        assert context[row, n:].abs().max().item() == 0.0, f"rows {n}.. of prompt {row} must be exactly zero"
        assert bool((context[row, :n].abs().sum(-1) > 0).all()), f"rows 0..{n - 1} of prompt {row} must be non-zero"


def test_umt5_matches_wan_t5_reference_on_valid_tokens(tiny_models, tiny_files):
    """The key map (gate.0 -> wi_0, fc1 -> wi_1, pos_embedding per block, ...) checked numerically."""
    encoder = tiny_models.text_encoder
    prompt = "A woman talks to the camera and smiles."
    context = encoder.encode([prompt])[0]
    tokens = encoder.tokenizer(clean_prompt(prompt), padding="max_length", max_length=512, return_tensors="pt")
    ids, mask = tokens.input_ids[0], tokens.attention_mask[0]
    n = int(mask.sum())
    want = reference_umt5(tiny_files.t5_state, ids, mask)
    diff = max_diff(context[:n], want[:n])
    assert diff < 2e-5, (
        f"UMT5 output differs from the float64 Wan T5 reference by {diff} on valid tokens (tolerance 2e-5)"
    )
    assert ids[n - 1].item() == 1, f"the last valid token must be EOS (id 1), found {ids[n - 1].item()}"
