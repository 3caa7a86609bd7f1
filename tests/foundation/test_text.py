"""Byte tokenizer and text encoder: no vocabulary (nothing learned from text, same everywhere),
exact byte round trips, truncation and padding, and padding that never changes an embedding."""

import dataclasses
import pickle

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ai4hi_sdk.foundation.text import (BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer, TextEncoder,
                                       normalize_report_text, split_sentences)

REPORTS = ["FINDINGS: There is a round opacity in the right upper zone.\nIMPRESSION: Right lung mass.",
           "FINDINGS: No focal opacity. No pneumothorax.\nIMPRESSION: Normal chest radiograph.",
           "Befund: kein Pleuraerguss, Rundherd links ø 12 mm."]


def test_tokenizer_has_no_vocabulary_and_learns_nothing_from_text():
    # its only field is the sequence length: there is nothing to download, fit or ship
    assert [f.name for f in dataclasses.fields(ByteTokenizer)] == ["max_len"]
    tokenizer = ByteTokenizer(64)
    before = pickle.dumps(tokenizer)
    first = tokenizer.encode("round opacity in the right lung")
    for report in REPORTS * 10:  # "seeing" a site's reports changes nothing
        tokenizer.encode(report)
    assert pickle.dumps(tokenizer) == before
    assert torch.equal(tokenizer.encode("round opacity in the right lung"), first)
    assert tokenizer.vocab_size == VOCAB_SIZE == 259
    # ids are the UTF-8 bytes themselves, so two sites (or the server) agree without sharing anything
    assert first[1:1 + 5].tolist() == list(b"round")


def test_text_encoder_shapes_depend_on_the_spec_only():
    torch.manual_seed(0)
    a = TextEncoder(max_len=64, width=32, layers=1, heads=4)
    torch.manual_seed(0)
    b = TextEncoder(max_len=64, width=32, layers=1, heads=4)
    assert a.embed.weight.shape == (VOCAB_SIZE, 32)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_bytes_round_trip(data):
    tokenizer = ByteTokenizer(len(data) + 3)
    ids = tokenizer.encode_bytes(data)
    assert ids.dtype == torch.int64 and ids.shape == (len(data) + 3,)
    assert int(ids.min()) >= 0 and int(ids.max()) < VOCAB_SIZE
    assert ids[0] == BOS_ID and ids[-2] == EOS_ID and ids[-1] == PAD_ID
    assert tokenizer.decode_bytes(ids) == data


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_text_round_trip_any_unicode(text):
    tokenizer = ByteTokenizer(4 * len(text) + 3)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_truncation_and_padding():
    tokenizer = ByteTokenizer(8)
    long = tokenizer.encode("abcdefghij")
    assert long.tolist() == [BOS_ID, *b"abcdef", EOS_ID]
    short = tokenizer.encode("ab")
    assert short.tolist() == [BOS_ID, *b"ab", EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    assert tokenizer.decode(short) == "ab"
    # a character cut in the middle of its bytes is replaced, never an error
    assert tokenizer.decode(ByteTokenizer(4).encode("øø")) == "ø"
    assert tokenizer.encode_batch([]).shape == (0, 8)


def test_normalisation_and_sentences():
    assert normalize_report_text("  No  Focal\nOPACITY. ") == "no focal opacity."
    assert split_sentences(REPORTS[0]) == ["There is a round opacity in the right upper zone.", "Right lung mass."]
    assert split_sentences(REPORTS[1]) == ["No focal opacity.", "No pneumothorax.", "Normal chest radiograph."]


def test_padding_never_changes_the_embedding():
    """The same report padded to 40 or to 96 bytes embeds identically: padding is masked out of the
    convolution (zero embedding), the attention and the pooling."""
    torch.manual_seed(0)
    encoder = TextEncoder(max_len=96, width=32, layers=2, heads=4).eval()
    text = normalize_report_text(REPORTS[0])[:30]
    with torch.no_grad():
        short = encoder(ByteTokenizer(40).encode_batch([text]))
        long = encoder(ByteTokenizer(96).encode_batch([text]))
        other = encoder(ByteTokenizer(96).encode_batch([normalize_report_text(REPORTS[1])[:30]]))
    assert torch.allclose(short, long, atol=1e-5)
    assert not torch.allclose(long, other, atol=1e-3)
