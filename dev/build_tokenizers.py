"""Rebuild dreamcore's shipped CLIP tokenizers from OpenAI's BPE file.

Run once by a developer, never at run time:

    python dev/build_tokenizers.py path/to/bpe_simple_vocab_16e6.txt.gz

The BPE file ships inside the `open_clip_torch` wheel (open_clip/bpe_simple_vocab_16e6.txt.gz, MIT
licence). CLIP's vocabulary is the 256 byte symbols, the same with an end-of-word marker, one entry per
merge and the two special tokens: 49,408 entries. SD1 (openai/clip-vit-large-patch14) pads with
<|endoftext|>; SD2 (OpenCLIP ViT-H) pads with "!" (id 0), which changes the text encoder's input.
SDXL's two tokenizers are these same files: the first pads as SD1's, the second (OpenCLIP ViT-bigG) as
SD2's (dreamcore.assets.load_sdxl_tokenizers), so no third copy of the vocabulary is shipped.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

MERGE_COUNT = 49152 - 256 - 2
OUT = Path(__file__).resolve().parent.parent / "dreamcore" / "assets" / "tokenizers"


def bytes_to_unicode() -> dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def main(bpe_path: str) -> None:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MERGE_COUNT + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    # One copy serves every family: SD2 and SDXL's second tokenizer load it with pad_token="!".
    for name, pad in (("clip", "<|endoftext|>"),):
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad}
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
        config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=77, do_lower_case=True,
                      errors="replace", add_prefix_space=False, clean_up_tokenization_spaces=True)
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
