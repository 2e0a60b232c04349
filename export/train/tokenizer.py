"""A RoBERTa-style tokenizer built offline from captions, for tiny stand-in CLAP models.

CLAP's text side uses RoBERTa's byte-level BPE. Without the hub we train a small one on
the corpus captions with the ``tokenizers`` package and wrap it as a transformers
``RobertaTokenizerFast`` through ``tokenizer_object=`` (passing vocab_file/merges_file is
silently ignored in transformers 5; docs/architecture.md). After ``save_pretrained(dir)``,
``AutoTokenizer.from_pretrained(dir)`` and ``tokenizers.Tokenizer.from_file(dir/tokenizer.json)``
give the same ids (the latter needs padding/truncation enabled from the run's settings).
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, RoBERTa order


def train_caption_tokenizer(captions: Iterable[str], vocab_size: int = 1000,
                            model_max_length: int = 77, add_prefix_space: bool = True):
    """Train a byte-level BPE on ``captions``; returns a RobertaTokenizerFast.

    ``add_prefix_space`` (default True) gives a word the same tokens at the start of a
    caption as inside it ("owl" -> "Ġowl" everywhere); without it, "owl hooting" and "an owl
    hooting" share no token for "owl", and a phrase moved to the front of a held-out
    template reads as new words to the tiny text tower.

    Special tokens get RoBERTa's ids (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4), which
    ClapTextConfig's defaults (pad 1, bos 0, eos 2) expect.
    """
    # torch: transformers pulls it in; tokenize() (bundle manifests) needs neither
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast

    captions = [c for c in captions if c and c.strip()]
    if not captions:
        raise ValueError("cannot train a tokenizer: no non-empty captions")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(captions, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=add_prefix_space)
    return RobertaTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
        model_max_length=model_max_length, add_prefix_space=add_prefix_space)


def tokenize(tokenizer, texts: list[str], max_length: int, padding: str = "max_length"):
    """Token ids and attention mask (torch int64, (B, max_length)) with the run's settings."""
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length,
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
