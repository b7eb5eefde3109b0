"""Text tokenizers: SentencePiece training and layout, the Hugging Face backend, config checks, the CLI."""

import json
import os
import pickle
import random
import sys

import pytest
import sentencepiece as spm

from flmjax import config as flm_config
from flmjax import presets
from flmjax.data import text
from flmjax.data.hf_tokenizer import HFTokenizer
from flmjax.data.sentencepiece_tokenizer import SPECIAL_TOKENS, SentencePieceTokenizer, train_sentencepiece
from launch import train_tokenizer

WORDS = (
    "the a cat dog sat on mat ran quickly slowly big small red blue house tree river sky sun moon hello "
    "world why how what we you they went home today yesterday tomorrow green water mountain garden window "
    "morning evening music quiet loud friend teacher street coffee bread apple orange yellow people "
    "question answer little often never always because before after under"
).split()
VOCAB = 64


def make_sentences(n=400, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def sentences():
    return make_sentences()


@pytest.fixture(scope="module")
def sp_bytes(sentences):
    return train_sentencepiece(sentences, VOCAB)


@pytest.fixture(scope="module")
def sp_tok(sp_bytes):
    return SentencePieceTokenizer(sp_bytes)


# ---------------------------------------------------------------------- SentencePiece layout and codec
def test_specials_sit_at_fixed_ids(sp_tok):
    assert sp_tok.special_ids == dict(SPECIAL_TOKENS)
    assert sp_tok.wait_id == 3
    assert [sp_tok.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<wait>"]


def test_layout_matches_the_tiny_and_small_presets():
    for preset in (presets.tiny(), presets.small()):
        assert preset.text_wait_id == SPECIAL_TOKENS["<wait>"]
        assert preset.bos_token_id == SPECIAL_TOKENS["<s>"]
        assert preset.eos_token_id == SPECIAL_TOKENS["</s>"]


def test_vocab_size_is_the_requested_size(sp_tok):
    assert sp_tok.vocab_size == VOCAB


def test_encode_decode_round_trips_ordinary_text(sp_tok):
    for sentence in make_sentences(50, seed=1):  # unseen combinations of the corpus words
        ids = sp_tok.encode(sentence)
        assert all(isinstance(i, int) and 0 <= i < sp_tok.vocab_size for i in ids)
        assert sp_tok.decode(ids) == sentence


def test_encode_adds_no_bos_or_eos(sp_tok):
    ids = sp_tok.encode("the cat sat")
    assert SPECIAL_TOKENS["<s>"] not in ids and SPECIAL_TOKENS["</s>"] not in ids


def test_literal_wait_string_does_not_encode_to_wait_id(sp_tok):
    ids = sp_tok.encode("the cat <wait> sat <wait>")
    assert sp_tok.wait_id not in ids
    assert set(ids) & set(SPECIAL_TOKENS.values()) <= {SPECIAL_TOKENS["<unk>"]}  # "<", ">" unseen


def test_decode_drops_wait_and_control_ids(sp_tok):
    ids = sp_tok.encode("the cat sat")
    padded = [sp_tok.wait_id, 1, *ids[:1], sp_tok.wait_id, sp_tok.wait_id, *ids[1:], 2, sp_tok.wait_id]
    assert sp_tok.decode(padded) == "the cat sat"


def test_decode_rejects_out_of_range_id(sp_tok):
    with pytest.raises(IndexError, match=str(VOCAB)):
        sp_tok.decode([5, VOCAB])


def test_training_twice_is_byte_identical(sentences, sp_bytes):
    assert train_sentencepiece(sentences, VOCAB) == sp_bytes


def test_bpe_model_type_keeps_the_layout(sentences):
    tok = SentencePieceTokenizer(train_sentencepiece(sentences, VOCAB, model_type="bpe"))
    assert tok.special_ids == dict(SPECIAL_TOKENS)
    assert tok.decode(tok.encode("the blue river")) == "the blue river"


def test_extra_specials_follow_wait(sentences):
    tok = SentencePieceTokenizer(train_sentencepiece(sentences, VOCAB, extra_specials=["<x>", "<y>"]))
    assert tok.special_ids == {**SPECIAL_TOKENS, "<x>": 4, "<y>": 5}
    assert 4 not in tok.encode("<x> the cat")


def test_too_large_vocab_names_the_supported_size():
    with pytest.raises(ValueError, match=r"vocab_size 5000 is too large .* at most \d+ pieces"):
        train_sentencepiece(make_sentences(50), 5000)


def test_soft_vocab_limit_accepts_a_smaller_vocabulary():
    tok = SentencePieceTokenizer(train_sentencepiece(make_sentences(50), 5000, hard_vocab_limit=False))
    assert len(SPECIAL_TOKENS) < tok.vocab_size < 5000
    assert tok.wait_id == 3


def test_empty_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="no text"):
        train_sentencepiece(["", "  "], VOCAB)


def test_trainer_options_cannot_move_the_specials(sentences):
    with pytest.raises(ValueError, match="pad_id"):
        train_sentencepiece(sentences, VOCAB, pad_id=0)


def test_model_with_user_defined_wait_is_rejected(sentences, tmp_path):
    model = tmp_path / "user_defined.model"
    with open(model, "wb") as f:  # <wait> as a user-defined symbol: text "<wait>" would encode to it
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=f,
            vocab_size=VOCAB,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            user_defined_symbols=["<wait>"],
            minloglevel=2,
        )
    assert spm.SentencePieceProcessor(model_file=str(model)).encode("<wait>")[-1] == 3
    with pytest.raises(ValueError, match="not a control symbol"):
        SentencePieceTokenizer(model)


def test_model_file_and_bytes_load_alike(sp_bytes, tmp_path):
    path = tmp_path / "tok.model"
    path.write_bytes(sp_bytes)
    from_file = SentencePieceTokenizer(str(path))
    assert from_file.model_bytes == sp_bytes
    assert from_file.encode("a big red dog") == SentencePieceTokenizer(sp_bytes).encode("a big red dog")


def test_sentencepiece_tokenizer_pickles(sp_tok):
    copy = pickle.loads(pickle.dumps(sp_tok))
    assert copy.encode("we went home today") == sp_tok.encode("we went home today")
    assert copy.wait_id == sp_tok.wait_id


def test_sentencepiece_tokenizer_satisfies_the_protocol(sp_tok):
    assert isinstance(sp_tok, text.Tokenizer)


# ---------------------------------------------------------------------- check_compatible
def test_check_compatible_passes_a_matching_or_padded_config(sp_tok):
    text.check_compatible(sp_tok, presets.tiny(vocab_size=VOCAB))
    text.check_compatible(sp_tok, presets.tiny(vocab_size=128))  # padded model vocabulary


def test_check_compatible_names_a_too_small_model_vocab(sp_tok):
    with pytest.raises(flm_config.ConfigError, match=rf"{VOCAB} ids .* only {VOCAB - 1}"):
        text.check_compatible(sp_tok, presets.tiny(vocab_size=VOCAB - 1))


def test_check_compatible_names_a_wait_id_mismatch(sp_tok):
    with pytest.raises(text.TokenizerMismatchError, match=r"<wait> id is 3 .* text_wait_token_id is 5"):
        text.check_compatible(sp_tok, presets.tiny(vocab_size=VOCAB, text_wait_id=5))


# ---------------------------------------------------------------------- Hugging Face backend
@pytest.fixture(scope="module")
def tokenizers_lib():
    try:
        import tokenizers
    except ImportError:
        message = "the `tokenizers` package is not installed (pip install 'flmjax[hf]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return tokenizers


def build_hf_tokenizer(tokenizers_lib, sentences, added=("<wait>", "<x>", "<y>")):
    """A byte-level BPE like Qwen's, with a special <|endoftext|> and `added` plain added tokens after it."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers_lib.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        sentences,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok.add_tokens(list(added))
    return tok


@pytest.fixture(scope="module")
def hf_checkpoint(tokenizers_lib, sentences, tmp_path_factory):
    """A folder like a released checkpoint's: tokenizer.json plus config.json naming the <wait> id."""
    folder = tmp_path_factory.mktemp("hf_checkpoint")
    tok = build_hf_tokenizer(tokenizers_lib, sentences)
    tok.save(str(folder / "tokenizer.json"))
    config = presets.tiny(vocab_size=tok.get_vocab_size(with_added_tokens=True), text_wait_id=tok.token_to_id("<wait>"))
    (folder / "config.json").write_text(json.dumps(config.to_official()))
    return folder, tok, config


def test_hf_from_checkpoint_takes_wait_id_from_config(hf_checkpoint):
    folder, tok, config = hf_checkpoint
    hf = HFTokenizer.from_checkpoint(folder)
    assert hf.wait_id == config.text_wait_id == tok.token_to_id("<wait>")
    assert hf.id_to_piece(hf.wait_id) == "<wait>"
    assert hf.special_ids["<wait>"] == hf.wait_id


def test_hf_vocab_size_counts_added_tokens(hf_checkpoint):
    folder, tok, _ = hf_checkpoint
    hf = HFTokenizer.from_checkpoint(folder)
    assert hf.vocab_size == tok.get_vocab_size(with_added_tokens=False) + 3


def test_hf_encode_decode_round_trips_ordinary_text(hf_checkpoint):
    hf = HFTokenizer.from_checkpoint(hf_checkpoint[0])
    for sentence in make_sentences(20, seed=2):
        assert hf.decode(hf.encode(sentence)) == sentence


def test_hf_literal_wait_string_does_not_encode_to_wait_id(hf_checkpoint):
    hf = HFTokenizer.from_checkpoint(hf_checkpoint[0])
    ids = hf.encode("the cat <wait> sat <|endoftext|>")
    assert hf.wait_id not in ids and set(ids).isdisjoint(hf.special_ids.values())
    assert hf.decode(ids) == "the cat <wait> sat <|endoftext|>"


def test_hf_decode_drops_wait_ids(hf_checkpoint):
    hf = HFTokenizer.from_checkpoint(hf_checkpoint[0])
    ids = hf.encode("hello world")
    assert hf.decode([hf.wait_id, *ids, hf.wait_id]) == "hello world"


def test_hf_explicit_wait_id_must_be_an_added_token(hf_checkpoint):
    folder, tok, _ = hf_checkpoint
    ordinary = tok.encode("the", add_special_tokens=False).ids[0]
    with pytest.raises(ValueError, match="not an added token"):
        HFTokenizer(folder / "tokenizer.json", wait_id=ordinary)


def test_hf_wait_id_beyond_the_file_is_reserved(tokenizers_lib, sentences, tmp_path):
    tok = build_hf_tokenizer(tokenizers_lib, sentences, added=())  # a plain tokenizer without FLM's tokens
    tok.save(str(tmp_path / "tokenizer.json"))
    size = tok.get_vocab_size(with_added_tokens=True)
    hf = HFTokenizer(tmp_path / "tokenizer.json", wait_id=size)
    assert hf.vocab_size == size + 1
    assert hf.id_to_piece(size) == "<wait>"
    assert hf.decode([size, *hf.encode("a red sun"), size]) == "a red sun"


def test_hf_tokenizer_pickles(hf_checkpoint):
    hf = HFTokenizer.from_checkpoint(hf_checkpoint[0])
    copy = pickle.loads(pickle.dumps(hf))
    assert copy.encode("the <wait> dog") == hf.encode("the <wait> dog")
    assert copy.wait_id not in copy.encode("the <wait> dog")


def test_hf_checkpoint_config_is_compatible(hf_checkpoint):
    folder = hf_checkpoint[0]
    hf = HFTokenizer.from_checkpoint(folder)
    assert isinstance(hf, text.Tokenizer)
    text.check_compatible(hf, flm_config.ModelConfig.from_official(folder))


def test_hf_backend_without_tokenizers_names_the_extra(monkeypatch, tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(ImportError, match=r"flmjax\[hf\]"):
        HFTokenizer(tmp_path / "tokenizer.json", wait_id=0)


# ---------------------------------------------------------------------- load_tokenizer
def test_load_tokenizer_reads_a_sentencepiece_model(sp_bytes, tmp_path):
    (tmp_path / "tok.model").write_bytes(sp_bytes)
    tok = text.load_tokenizer(tmp_path / "tok.model")
    assert isinstance(tok, SentencePieceTokenizer) and tok.wait_id == 3


def test_load_tokenizer_reads_a_checkpoint_folder_or_its_tokenizer_json(hf_checkpoint):
    folder, _, config = hf_checkpoint
    for path in (folder, folder / "tokenizer.json"):
        tok = text.load_tokenizer(path)
        assert isinstance(tok, HFTokenizer) and tok.wait_id == config.text_wait_id


def test_load_tokenizer_rejects_an_unknown_kind(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        text.load_tokenizer(tmp_path / "vocab.txt")


# ---------------------------------------------------------------------- CLI
@pytest.fixture
def corpus_files(tmp_path):
    sentences = make_sentences(300, seed=3)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(sentences[:200]) + "\n\n")
    b.write_text("\n".join(sentences[200:]) + "\n")
    return a, b


def test_cli_writes_a_model_with_the_specials(corpus_files, tmp_path, capsys):
    out = tmp_path / "tok.model"
    train_tokenizer.main(["--input", ",".join(map(str, corpus_files)), "--vocab_size", str(VOCAB), "--out", str(out)])
    tok = text.load_tokenizer(out)
    assert tok.vocab_size == VOCAB and tok.special_ids == dict(SPECIAL_TOKENS)
    printed = capsys.readouterr().out
    assert "300 sentences" in printed and f"vocab size {VOCAB}" in printed and "<wait>=3" in printed


def test_cli_refuses_to_overwrite_without_the_flag(corpus_files, tmp_path):
    out = tmp_path / "tok.model"
    out.write_bytes(b"keep me")
    args = ["--input", str(corpus_files[0]), "--vocab_size", str(VOCAB), "--out", str(out)]
    with pytest.raises(SystemExit):
        train_tokenizer.main(args)
    assert out.read_bytes() == b"keep me"
    train_tokenizer.main(args + ["--overwrite"])
    assert text.load_tokenizer(out).wait_id == 3


def test_cli_a_vocabulary_the_corpus_cannot_fill_is_one_error_line(corpus_files, tmp_path, capsys):
    from launch import cli

    args = ["--input", str(corpus_files[0]), "--vocab_size", "100000", "--out", str(tmp_path / "tok.model")]
    assert cli.run(train_tokenizer.main, args) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: vocab_size 100000 is too large for this corpus") and error.count("\n") == 1
    assert not (tmp_path / "tok.model").exists()
