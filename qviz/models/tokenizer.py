"""The byte-level tokenizer of the random-weight decoders (no vocabulary file needed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = ["ByteTokenizer", "byte_level_spelling"]


def byte_level_spelling() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map: how byte-level BPE vocabularies spell a byte.

    Examples
    --------
    >>> spell = byte_level_spelling()
    >>> spell[ord("a")], spell[0], spell[ord(" ")]
    ('a', 'Ā', 'Ġ')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in spelling]
    spelling.update({b: chr(256 + i) for i, b in enumerate(others)})  # the rest, in order, from U+0100 on
    return spelling


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocab 259: 256 bytes, BOS, EOS, PAD), for the random decoders.

    Examples
    --------
    >>> ByteTokenizer()(["hi"])["input_ids"].tolist()
    [[256, 104, 105]]
    """

    bos_id, eos_id, pad_id = 256, 257, 258
    vocab_size = 259
    special_tokens = ("<bos>", "<eos>", "<pad>")

    @classmethod
    def gguf_tokens(cls) -> list[str]:
        """The vocabulary as a GGUF file spells it: the 256 bytes byte-level (GPT-2's map), then the specials.

        :func:`qviz.export_gguf` writes this list, and loading a GGUF whose
        vocabulary is exactly this list gives back a :class:`ByteTokenizer`.

        Examples
        --------
        >>> ByteTokenizer.gguf_tokens()[104], ByteTokenizer.gguf_tokens()[256:]
        ('h', ['<bos>', '<eos>', '<pad>'])
        """
        spelling = byte_level_spelling()
        return [spelling[b] for b in range(256)] + list(cls.special_tokens)

    def __call__(self, texts: Sequence[str], max_length: int = 128) -> dict[str, torch.Tensor]:
        rows = [[self.bos_id, *list(t.encode("utf-8"))[: max_length - 1]] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        special = dict(zip((self.bos_id, self.eos_id, self.pad_id), self.special_tokens, strict=True))
        return [special[int(i)] if int(i) in special else bytes([int(i)]).decode("latin-1") for i in ids]
