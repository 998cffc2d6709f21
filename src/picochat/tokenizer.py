"""Byte-level BPE tokenizer (trained, or GPT-2's own), special tokens, and the chat template.

Byte-pair encoding for subwords follows Sennrich et al. (arXiv 1508.07909); the byte-level variant, where
the base alphabet is the 256 byte values so any unicode string can be encoded without an unknown token,
is GPT-2's ("Language Models are Unsupervised Multitask Learners", §2.2). Text is first split by GPT-2's
pre-tokenizer regex (contractions, letter runs, digit runs, other-symbol runs, whitespace) and merges
never cross those pieces. Both tokenizers run on Hugging Face `tokenizers`.

- `Tokenizer.train(texts)` learns merges on our own corpus; the 8 special tokens get ids 0..7.
- `Tokenizer.gpt2()` rebuilds GPT-2's 50,257-token BPE from the vendored `assets/gpt2.tiktoken` (a list
  of token bytes with ranks). The merges are derived from the ranks: each multi-byte token of rank r is
  the pair that running BPE on its own bytes with only ranks < r leaves behind, and merges are ordered
  by r. This makes the ids equal GPT-2's on any text. The 7 chat specials are appended at 50257..50263.

Deviations and design choices:
- Special-token strings typed inside text are never special: `encode` runs a second internal tokenizer
  that has no added tokens, so a user writing "<|end|>" gets its plain BPE pieces. Special ids only
  enter a sequence through `render_conversation`/`render_prompt` or by the caller placing them.
- `decode` maps ids to bytes with our own table and decodes UTF-8 with replacement, so cutting a
  multi-byte character between tokens never raises.

Chat template (one layout for training and for prompting):
    <|endoftext|> <|role|> content <|end|> <|role|> content <|end|> ...
with mask 1 exactly on the assistant's content tokens and their <|end|>.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = [
    "<|endoftext|>",  # document separator; GPT-2's only special token (id 50256 there)
    "<|system|>",  # chat roles
    "<|user|>",
    "<|assistant|>",
    "<|end|>",  # end of one chat message
    "<|start|>",  # GPT-1 task input format: start text delim text extract (Radford et al. 2018, §3.3)
    "<|delim|>",
    "<|extract|>",
]
ROLES = ("system", "user", "assistant")
N_BYTES = 256
GPT2_N_VOCAB = 50257  # 50,000 merges + 256 bytes + <|endoftext|>
GPT2_ASSET = "gpt2.tiktoken"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte value to one printable unicode character.

    BPE vocabularies are stored as strings, and a byte such as 0x20 (space) or 0x0A would be invisible or
    break the merges file. Bytes that are already printable latin-1 characters map to themselves; the
    rest (control bytes, space, a few others) are shifted to code points 256 and up, in byte order.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(N_BYTES):
        if b not in table:
            table[b] = chr(N_BYTES + shifted)
            shifted += 1
    return table


def _bpe_split(token: bytes, ranks: Mapping[bytes, int], max_rank: int) -> list[bytes]:
    """Run byte-level BPE on `token` using only merges of rank < max_rank (lowest rank first)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best_rank, best_i = max_rank, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], max_rank)
            if rank < best_rank:
                best_rank, best_i = rank, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def merges_from_ranks(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Derive the ordered merge list from tiktoken-style ranks (token bytes -> rank).

    The merge that creates a token of rank r is the pair of tokens left after BPE on the token's bytes
    with ranks < r; when only one split into two lower-ranked tokens exists it is that split, which
    skips the BPE run for about half of GPT-2's tokens. Merges come out ordered by r.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        splits = [
            (token[:i], token[i:])
            for i in range(1, len(token))
            if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank
        ]
        if len(splits) != 1:
            parts = _bpe_split(token, ranks, rank)
            if len(parts) != 2:
                raise ValueError(f"token {token!r} (rank {rank}) is not one merge of two lower-ranked tokens")
            splits = [(parts[0], parts[1])]
        merges.append(splits[0])
    return merges


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a `.tiktoken` file: one "<base64 token bytes> <rank>" per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
            except (ValueError, IndexError) as e:
                raise ValueError(
                    f"{path}:{lineno}: expected '<base64 token bytes> <rank>', got {line[:80]!r}; "
                    "the vendored GPT-2 BPE file is corrupt, restore it from the package"
                ) from e
            ranks[token] = rank
    return ranks


def _byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> HFTokenizer:
    """An HF tokenizer with GPT-2's pipeline: ByteLevel pre-tokenizer (GPT-2 regex, no prefix space)."""
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges) if vocab else models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    return hf


@functools.lru_cache(maxsize=1)
def _gpt2_tokenizer() -> Tokenizer:
    """Convert the vendored GPT-2 ranks once per process (about 1 s); the Tokenizer is immutable."""
    ranks = read_tiktoken_ranks(Path(str(resources.files("picochat") / "assets" / GPT2_ASSET)))
    if len(ranks) != GPT2_N_VOCAB - 1 or sorted(ranks.values()) != list(range(GPT2_N_VOCAB - 1)):
        raise ValueError(f"{GPT2_ASSET}: expected ranks 0..{GPT2_N_VOCAB - 2}, got {len(ranks)} entries")
    to_char = bytes_to_unicode()

    def as_str(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    vocab = {as_str(token): rank for token, rank in ranks.items()}
    vocab[SPECIAL_TOKENS[0]] = GPT2_N_VOCAB - 1  # <|endoftext|> = 50256, as in GPT-2
    merges = [(as_str(a), as_str(b)) for a, b in merges_from_ranks(ranks)]
    hf = _byte_level_bpe(vocab, merges)
    hf.add_special_tokens(SPECIAL_TOKENS)  # <|endoftext|> keeps 50256; the rest get 50257..50263
    return Tokenizer(hf)


def _validate_messages(messages: Sequence[Mapping[str, object]]) -> None:
    """Raise ValueError naming the first bad message (index, what was given, what is expected)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or len(messages) == 0:
        raise ValueError(
            f"messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts, got {messages!r:.80}"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {message!r:.80}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{i}] has role {role!r}; expected one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise ValueError(f"messages[{i}] has role 'system'; a system message may only be messages[0]")
        if not isinstance(content, str):
            raise ValueError(
                f"messages[{i}] content must be a str, got {type(content).__name__}; "
                "join multi-part content into one string"
            )


class Tokenizer:
    """Byte-level BPE with picochat's special tokens and chat template.

    Build one with `Tokenizer.train`, `Tokenizer.gpt2` or `Tokenizer.load`. Instances are immutable.
    """

    def __init__(self, hf: HFTokenizer, source: str = "<tokenizer>") -> None:
        """Wrap (and take ownership of) an HF byte-level BPE tokenizer that has every SPECIAL_TOKENS entry
        as a special token; `source` names where it came from in error messages."""
        spec = json.loads(hf.to_str())
        _check_layout(spec, source)
        self._hf = hf
        spec["added_tokens"] = []  # the same BPE without added tokens: specials in text stay text
        self._plain = HFTokenizer.from_str(json.dumps(spec))
        self._special_ids = {name: hf.token_to_id(name) for name in SPECIAL_TOKENS}
        self._id_bytes = _id_bytes_table(hf, set(self._special_ids), source)
        self.n_base = self._plain.get_vocab_size()
        """Ids below n_base are the BPE model's own vocabulary (50,257 for GPT-2)."""

    # ---- constructors -------------------------------------------------------------------------------

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2, show_progress: bool = False
    ) -> Tokenizer:
        """Learn a byte-level BPE on `texts`; SPECIAL_TOKENS get ids 0..7 and count toward vocab_size.

        A small corpus can stop with fewer tokens than vocab_size (no pair left that occurs
        min_frequency times); `tok.vocab_size` is the real size.
        """
        smallest = len(SPECIAL_TOKENS) + N_BYTES
        if vocab_size < smallest:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: the {len(SPECIAL_TOKENS)} special tokens and "
                f"{N_BYTES} byte tokens need {smallest}; pass vocab_size >= {smallest} (e.g. 8192)"
            )
        if min_frequency < 1:
            raise ValueError(f"min_frequency={min_frequency}; expected >= 1")
        hf = _byte_level_bpe({}, [])
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        n_chars = [0]
        hf.train_from_iterator(_counted_texts(texts, n_chars), trainer=trainer)
        if n_chars[0] == 0:
            raise ValueError("Tokenizer.train got no text (empty iterable or only empty strings)")
        return cls(hf)

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """GPT-2's BPE (ids 0..50256 exactly as GPT-2) plus the 7 chat specials at 50257..50263."""
        return _gpt2_tokenizer()

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> Tokenizer:
        """Build from the text of a tokenizer.json written by `save`/`to_json`; `source` names it in errors."""
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise ValueError(
                f"{source}: not a valid tokenizer.json ({e}); write it with Tokenizer.save, or re-run "
                "`picochat tokenizer`"
            ) from e
        return cls(hf, source)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer.json file written by `save` (the Hugging Face tokenizers format)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file {path} does not exist; expected a tokenizer.json written by Tokenizer.save "
                "(a checkpoint directory holds one)"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e}); expected a tokenizer.json") from e
        return cls.from_json(text, source=str(path))

    # ---- serialisation ------------------------------------------------------------------------------

    def to_json(self) -> str:
        """The tokenizer.json text (HF format; specials are added tokens with special=true)."""
        return self._hf.to_str(pretty=True)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json to `path`, loadable by `Tokenizer.load`, HF `tokenizers.Tokenizer.from_file`
        and `transformers.PreTrainedTokenizerFast(tokenizer_file=...)`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)

    @functools.cached_property
    def _identity(self) -> str:
        spec = json.loads(self._hf.to_str())
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
        canon = {
            "vocab": sorted(spec["model"]["vocab"].items(), key=lambda item: item[1]),
            "merges": merges,
            "specials": sorted(self._special_ids.items(), key=lambda item: item[1]),
        }
        return hashlib.sha256(json.dumps(canon, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]

    def identity(self) -> str:
        """Short hash (16 hex chars of sha256) of vocab, merges and special ids; equal iff ids agree."""
        return self._identity

    # ---- ids ----------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (an embedding table needs this many rows)."""
        return len(self._id_bytes)

    def special_id(self, name: str) -> int:
        """The id of a special token, e.g. special_id("<|end|>")."""
        if name not in self._special_ids:
            raise ValueError(f"unknown special token {name!r}; known: {', '.join(SPECIAL_TOKENS)}")
        return self._special_ids[name]

    @property
    def eot_id(self) -> int:
        """Id of <|endoftext|>."""
        return self._special_ids[SPECIAL_TOKENS[0]]

    def id_to_bytes(self, i: int) -> bytes:
        """The raw bytes of one token (special tokens: their UTF-8 name). For streaming decoders."""
        if not 0 <= i < len(self._id_bytes):
            raise ValueError(f"token id {i} out of range [0, {len(self._id_bytes)})")
        return self._id_bytes[i]

    # ---- text ---------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """BPE ids of plain text. Special-token strings inside `text` are encoded as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts at once, in parallel on the Rust side (for writing shards)."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"encode_batch expects str items, texts[{i}] is {type(text).__name__}")
        return [e.ids for e in self._plain.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special ids become their names. Broken UTF-8 (a cut character) becomes U+FFFD."""
        table = self._id_bytes
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(table)):
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise ValueError(f"token id {bad} out of range [0, {len(table)}) in decode")
        return b"".join([table[i] for i in ids]).decode("utf-8", errors="replace")

    # ---- chat template ------------------------------------------------------------------------------

    def render_conversation(self, messages: Sequence[Mapping[str, object]]) -> tuple[list[int], list[int]]:
        """(ids, mask) for a conversation: <|endoftext|> then <|role|> content <|end|> per message.

        mask[t] = 1 exactly on assistant content tokens and the <|end|> closing them (the SFT loss).
        """
        _validate_messages(messages)
        end = self._special_ids["<|end|>"]
        ids, mask = [self.eot_id], [0]
        for message in messages:
            role, content = message["role"], message["content"]
            body = [*self.encode(content), end]
            ids += [self._special_ids[f"<|{role}|>"], *body]
            mask += [0] + [int(role == "assistant")] * len(body)
        return ids, mask

    def render_prompt(self, messages: Sequence[Mapping[str, object]]) -> list[int]:
        """The conversation so far, then <|assistant|>: the model continues with the answer and <|end|>."""
        ids, _ = self.render_conversation(messages)
        return [*ids, self._special_ids["<|assistant|>"]]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, n_base={self.n_base}, identity={self.identity()!r})"


def _counted_texts(texts: Iterable[str], n_chars: list[int]) -> Iterable[str]:
    """Yield `texts` unchanged, checking each is a str and adding its length to n_chars[0]."""
    if isinstance(texts, str):
        raise TypeError("Tokenizer.train expects an iterable of str, got one str; wrap it in a list")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.train expects str items, item {i} is {type(text).__name__}")
        n_chars[0] += len(text)
        yield text


def _check_layout(spec: dict, source: str) -> None:
    """Raise ValueError unless `spec` (parsed tokenizer.json) is picochat's byte-level BPE with all specials."""
    fix = "expected a byte-level BPE tokenizer.json written by picochat's Tokenizer.save"
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{source}: model type is {model.get('type')!r}, not 'BPE'; {fix}")
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or spec.get("normalizer"):
        raise ValueError(
            f"{source}: pre-tokenizer/normalizer is not plain ByteLevel (no prefix space); {fix}"
        )
    specials = {t["content"] for t in spec.get("added_tokens") or [] if t.get("special")}
    missing = [name for name in SPECIAL_TOKENS if name not in specials]
    if missing:
        raise ValueError(f"{source}: special tokens {missing} are missing; {fix}")


def _id_bytes_table(hf: HFTokenizer, specials: set[str], source: str) -> list[bytes]:
    """bytes of every id: special tokens as their UTF-8 name, BPE tokens through the byte-level map."""
    # str.translate maps each byte-level character to the latin-1 character of its byte, in C.
    # Latin-1 characters outside the byte-level alphabet (raw space, control bytes) go to U+FFFD so they fail.
    to_latin1 = {c: 0xFFFD for c in range(N_BYTES)} | {ord(c): b for b, c in bytes_to_unicode().items()}
    table = []
    for i in range(hf.get_vocab_size(with_added_tokens=True)):
        token = hf.id_to_token(i)
        if token is None:
            raise ValueError(f"{source}: no token has id {i}; ids must be contiguous from 0")
        if token in specials:
            table.append(token.encode("utf-8"))
            continue
        try:
            table.append(token.translate(to_latin1).encode("latin-1"))
        except UnicodeEncodeError as e:
            raise ValueError(f"{source}: token {token!r} (id {i}) is not in the byte-level alphabet") from e
    return table
