"""lm-eval's ``--use_cache`` for streaming_hf: results in a table of their own, guarded by a fingerprint of
everything that changes a result (``StreamingHFLM.cache_fingerprint``)."""

from __future__ import annotations

from lm_eval_streaming.options import StreamingArgError

# Key of the fingerprint stored in an lm-eval --use_cache database (request hashes are hex digests).
CACHE_FINGERPRINT_KEY = "lm_eval_streaming/fingerprint"
# lm-eval's CachingLM reads and writes the table "unnamed" of the --use_cache file; streaming_hf keeps its
# results in a table of its own, so `--model hf` (or any model) given the same file never reads them.
CACHE_TABLE = "lm_eval_streaming"
# Constructor args that change how a result is computed, not what it is (kept out of the fingerprint).
CACHE_NEUTRAL_ARGS = frozenset({"batch_size", "max_batch_size", "device", "parallelize", "device_map",
                                "max_memory_per_gpu", "max_cpu_memory", "offload_folder", "trust_remote_code",
                                "pretrained", "tokenizer", "revision"})  # the last three: resolved below


def _own_cache_table(db) -> None:
    """Point lm-eval's cache (a SqliteDict, shared by CachingLM and its hook) at streaming_hf's own table."""
    if getattr(db, "tablename", CACHE_TABLE) == CACHE_TABLE:
        return
    db.conn.execute(f'CREATE TABLE IF NOT EXISTS "{CACHE_TABLE}" (key TEXT PRIMARY KEY, value BLOB)')
    db.commit()
    db.tablename = CACHE_TABLE


def tokenizer_digest(tokenizer) -> str:
    """Hash of what encodes text: the tokenizer's full definition (vocab, merges, normalizer, pre/post
    processing) and special tokens, whatever path or object it came from."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    extra = repr((type(tokenizer).__name__, tokenizer.all_special_tokens, getattr(tokenizer, "chat_template", None)))
    return hashlib.sha256((content + extra).encode()).hexdigest()[:16]


def guard_cache(db, mine: str) -> None:
    """Refuse a cache database filled under another fingerprint than ``mine``; stamp a new one."""
    _own_cache_table(db)
    stored = db.get(CACHE_FINGERPRINT_KEY)
    where = getattr(db, "filename", "the --use_cache database")
    if stored is None and len(db):
        raise StreamingArgError(
            f"--use_cache {where}: it holds {len(db)} results without a streaming_hf fingerprint (another "
            f"model type or an older version), keyed by request only; they could be another setting's. "
            f"Use a new --use_cache path for {mine}")
    if stored is not None and stored != mine:
        raise StreamingArgError(
            f"--use_cache {where} was filled by {stored}; this run is {mine}. Reusing it would report one "
            f"setting's numbers as another's: use one --use_cache path per setting")
    if stored is None:
        db[CACHE_FINGERPRINT_KEY] = mine
        db.commit()
